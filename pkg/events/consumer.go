package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
)

// ConsumerConfig configures the durable pull consumer of a worker, run by
// Consume. Zero values take the defaults given.
type ConsumerConfig struct {
	// Stream is the stream consumed. Default "PACSFLOW".
	Stream string
	// Durable names the consumer. Required. The replicas of a service
	// share it, and each event goes to one of them. Its dead letters are
	// on dlq.<Durable>.<stream sequence>, so it is one subject token.
	Durable string
	// FilterSubjects selects the events, e.g. "pacs.study.received.>".
	// Default: every event of the stream.
	FilterSubjects []string
	// StartSeq or StartTime is where a new consumer starts (at most one of
	// them); default: the oldest event the stream keeps. They are ignored
	// once the consumer exists, which resumes where it stopped: JetStream
	// cannot move a consumer's start, and a service restarting with
	// StartTime: time.Now() must not skip what came while it was down.
	StartSeq  uint64
	StartTime time.Time
	// AckWait is how long JetStream waits for the outcome of a delivery
	// before delivering the message again: after a crash, or when the
	// process hangs. A running handler keeps its message from redelivery
	// by reporting progress every AckWait/3. Default 30 s.
	AckWait time.Duration
	// MaxDeliver is how many times a message is delivered before it is
	// dead-lettered. Default 5; -1: no limit, so transient errors are
	// retried forever.
	MaxDeliver int
	// Backoff are the delays before redelivering a message whose handler
	// failed: Backoff[n-1] after the nth delivery, the last entry bounding
	// the rest. Default 1 s, 5 s, 30 s, 2 min. They are applied by Consume
	// (NakWithDelay), not set on the JetStream consumer, where they would
	// replace AckWait for the first deliveries and get a slow handler's
	// message redelivered after a second.
	Backoff []time.Duration
	// Delay, when set, replaces Backoff: the delay before redelivering a
	// message after its nth delivery failed, e.g. exponential with jitter.
	Delay func(n int) time.Duration
	// MaxAckPending bounds the messages delivered and not yet settled,
	// across all replicas. Default 256.
	MaxAckPending int
	// Concurrency is how many handlers run at once in this process.
	// Default 1. Messages are pulled one at a time as handlers take them,
	// so that none waits in the client for long: one waiting there ages
	// against AckWait (the one that does is reported in progress).
	Concurrency int
	// Logger receives retries and dead letters. Default slog.Default().
	Logger *slog.Logger
}

func (c ConsumerConfig) withDefaults() (ConsumerConfig, error) {
	if c.Durable == "" {
		return c, errors.New("consumer: Durable is required")
	}
	if c.StartSeq != 0 && !c.StartTime.IsZero() {
		return c, fmt.Errorf("consumer %s: StartSeq and StartTime are exclusive", c.Durable)
	}
	if c.Stream == "" {
		c.Stream = StreamConfig{}.withDefaults().Name
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 5
	}
	if len(c.Backoff) == 0 {
		c.Backoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute}
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 256
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Delivery is one delivery of an event to a Handler.
type Delivery struct {
	// Event is the decoded event.
	Event *Received
	// Header holds the message's headers as published, the trace context
	// among them.
	Header nats.Header
	// Deliveries counts the deliveries of this message, this one included:
	// 1 the first time.
	Deliveries int
	// StreamSeq is the message's sequence in the stream.
	StreamSeq uint64
}

// Handler processes one event. It returns nil once everything the event
// leads to is done and durable: events it publishes acknowledged by
// JetStream (Publisher.Publish returns only then), objects stored. Only
// then is the message acknowledged, so a crash before that redelivers it;
// delivery is at least once, and handlers must be idempotent.
//
// An error wrapping ErrPoison (see Poison) dead-letters the message at
// once: it can never succeed. Any other error is transient: the message
// is delivered again after a backoff, and dead-lettered when it fails on
// its last allowed delivery. The context ends when Consume's does; an error
// returned then is not counted as a failure. A handler that panics crashes
// the process, as in any Go program: its message comes back after AckWait,
// and one that crashes every time is dead-lettered by the reconciler once
// it has run out of deliveries.
type Handler func(ctx context.Context, d *Delivery) error

// ErrPoison marks a message that no retry can handle: malformed, or
// contradicting the contract. Consume dead-letters it without retrying.
var ErrPoison = errors.New("poison message")

// Poison marks err as permanent: the handler's message goes to the
// dead-letter stream with err as the reason. Poison(nil) is ErrPoison.
func Poison(err error) error {
	if err == nil {
		return ErrPoison
	}
	return fmt.Errorf("%w: %w", ErrPoison, err)
}

// Consume creates the durable pull consumer cfg describes, or updates it
// to cfg, and hands its events to h until ctx ends; it then waits for the
// running handlers and returns nil. It returns an error if the NATS
// connection closes or the consumer is deleted meanwhile. Several
// processes may run Consume on the same Durable: they share the work.
//
// Each message is settled after its handler returns:
//   - nil: acknowledged, waiting for JetStream's confirmation (a lost
//     acknowledgement would redeliver the message after AckWait);
//   - ErrPoison, or a message that is not a CloudEvent: its dead letter is
//     published, then the message is terminated with the error as reason;
//   - another error: redelivered after Backoff, or on the last delivery
//     (MaxDeliver) dead-lettered and terminated;
//   - an error after ctx ended: redelivered at once, to another replica.
//
// While a handler runs, JetStream is told every AckWait/3 that its message
// is in progress. When the dead letter cannot be published (the
// dead-letter stream is missing or full), the message is neither
// acknowledged nor terminated but redelivered after a backoff; once it has
// run out of deliveries, JetStream's advisory lets the reconciler
// (RunDeadLetterReconciler) record it when it can: nothing is lost. A
// message that crashes its process each time, or times out, is covered the
// same way.
//
// Provision the streams first: Consume does not create them.
func Consume(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig, h Handler) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("consumer %s: no handler", cfg.Durable)
	}
	cons, err := ensureConsumer(ctx, js, cfg)
	for delay := time.Second; Transient(err) && ctx.Err() == nil; delay = min(2*delay, 15*time.Second) {
		// A stream without a leader (a cluster electing one, a node
		// restarting) cannot take the consumer yet: wait, do not fail.
		cfg.Logger.Warn("consumer: JetStream not ready; retrying", "consumer", cfg.Durable, "err", err, "retry_in", delay)
		wait(ctx, delay)
		cons, err = ensureConsumer(ctx, js, cfg)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	w := &worker{js: js, cfg: cfg, h: h, log: cfg.Logger.With("consumer", cfg.Durable), m: consumerInstruments()}
	w.attrs = metric.WithAttributes(attribute.String("consumer", cfg.Durable))
	lag, err := w.m.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		info, err := cons.Info(ctx)
		if err != nil {
			return nil // no figure this scrape: the broker is away
		}
		o.ObserveInt64(w.m.pending, int64(info.NumPending), w.attrs)
		o.ObserveInt64(w.m.ackPending, int64(info.NumAckPending), w.attrs)
		return nil
	}, w.m.pending, w.m.ackPending)
	if err != nil {
		return fmt.Errorf("consumer %s: metrics: %w", cfg.Durable, err)
	}
	defer func() { _ = lag.Unregister() }()
	return pull(ctx, cons, cfg.Concurrency, cfg.AckWait/3, w.log, w.handle)
}

// instruments are the consumers' metrics, exported through OpenTelemetry
// (on /metrics in pacsflow's processes), labelled by consumer.
type instruments struct {
	meter       metric.Meter
	handled     metric.Int64Counter
	duration    metric.Float64Histogram
	redelivered metric.Int64Counter
	deadLetters metric.Int64Counter
	pending     metric.Int64ObservableGauge
	ackPending  metric.Int64ObservableGauge
}

func consumerInstruments() *instruments {
	m := otel.Meter(instrumentation)
	in := &instruments{meter: m}
	// Errors are impossible with valid names; a no-op instrument stands in.
	in.handled, _ = m.Int64Counter("pacsflow_events_handled", metric.WithDescription("Events a consumer settled, by outcome: ack, retry, dead_letter."))
	in.duration, _ = m.Float64Histogram("pacsflow_events_handle_duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a consumer receiving an event to its acknowledgement being confirmed."),
		metric.WithExplicitBucketBoundaries(.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300))
	in.redelivered, _ = m.Int64Counter("pacsflow_events_redelivered", metric.WithDescription("Deliveries of an event after its first."))
	in.deadLetters, _ = m.Int64Counter("pacsflow_events_dead_letters", metric.WithDescription("Events a consumer gave up on and recorded in dlq.<consumer>."))
	in.pending, _ = m.Int64ObservableGauge("pacsflow_events_consumer_pending", metric.WithDescription("Events in the stream not yet delivered to the consumer (its lag)."))
	in.ackPending, _ = m.Int64ObservableGauge("pacsflow_events_consumer_ack_pending", metric.WithDescription("Events delivered to the consumer and not yet acknowledged."))
	return in
}

// ensureConsumer creates the consumer, or updates an existing one while
// keeping its start position.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig) (jetstream.Consumer, error) {
	want := jetstream.ConsumerConfig{
		Durable:       cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    cfg.MaxDeliver,
		MaxAckPending: cfg.MaxAckPending,
	}
	// One filter goes in FilterSubject, which every server version knows.
	if len(cfg.FilterSubjects) == 1 {
		want.FilterSubject = cfg.FilterSubjects[0]
	} else {
		want.FilterSubjects = cfg.FilterSubjects
	}
	// Two attempts: when replicas start together, another may create the
	// consumer between our look-up and our create.
	for attempt := 0; ; attempt++ {
		cur, err := js.Consumer(ctx, cfg.Stream, cfg.Durable)
		switch {
		case err == nil:
			old := cur.CachedInfo().Config
			want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = old.DeliverPolicy, old.OptStartSeq, old.OptStartTime
			cons, err := js.UpdateConsumer(ctx, cfg.Stream, want)
			if err != nil {
				return nil, fmt.Errorf("update consumer %s on %s: %w", cfg.Durable, cfg.Stream, err)
			}
			return cons, nil
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			switch {
			case cfg.StartSeq != 0:
				want.DeliverPolicy, want.OptStartSeq = jetstream.DeliverByStartSequencePolicy, cfg.StartSeq
			case !cfg.StartTime.IsZero():
				t := cfg.StartTime
				want.DeliverPolicy, want.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
			}
			cons, err := js.CreateConsumer(ctx, cfg.Stream, want)
			if errors.Is(err, jetstream.ErrConsumerExists) && attempt == 0 {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("create consumer %s on %s: %w", cfg.Durable, cfg.Stream, err)
			}
			return cons, nil
		default:
			return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, cfg.Stream, err)
		}
	}
}

// nextWait bounds each wait for the next message. The iterator asks the
// server for messages only within Next, and nats.go v1.55 can skip asking
// when the server answered its previous request before the client finished
// sending it (it checks a flag that is still set), then waits for a
// message it never requested until its heartbeat check gives up, 30 s
// later. Calling Next again asks anew.
const nextWait = 100 * time.Millisecond

// stallCheck is how long pull waits without a message before it checks
// that the server still holds its pull request. Waits as short as
// nextWait disable the iterator's own check (missing heartbeats over 30 s
// of one Next call), and a lost request would stall the consumer; the
// server answers a request that expires (30 s) or that a new consumer
// leader drops, so this is a last resort.
const stallCheck = time.Minute

// errStalled reports messages waiting on the server while it holds no
// pull request of ours.
var errStalled = errors.New("the server holds no pull request while messages wait")

// pull hands the consumer's messages to fn on n goroutines until ctx
// ends, then waits for them. progress is how often a message waiting for
// a free goroutine is reported in progress.
func pull(ctx context.Context, cons jetstream.Consumer, n int, progress time.Duration, log *slog.Logger, fn func(context.Context, jetstream.Msg)) error {
	msgs := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for m := range msgs {
				fn(ctx, m)
			}
		})
	}
	defer wg.Wait()
	defer close(msgs)
	for {
		err := feed(ctx, cons, msgs, progress, log)
		if !errors.Is(err, errStalled) {
			return err
		}
		log.Warn("pulling anew", "err", err)
	}
}

// feed pulls messages into msgs until ctx ends (nil), the consumer or the
// connection is gone, or its pull request is (errStalled).
func feed(ctx context.Context, cons jetstream.Consumer, msgs chan<- jetstream.Msg, progress time.Duration, log *slog.Logger) error {
	// Messages keeps what the server sent in its own buffer, so waiting
	// for more never drops one (a short Fetch would, and the server would
	// resend it only after AckWait). It pulls one message per Next call:
	// a message pulled ahead of a free handler ages against AckWait, and
	// the one taken here is kept alive by handOff.
	it, err := cons.Messages(jetstream.PullMaxMessages(1))
	if err != nil {
		return fmt.Errorf("consumer %s: %w", cons.CachedInfo().Name, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	active := time.Now()
	for {
		m, err := it.Next(jetstream.NextMaxWait(nextWait))
		switch {
		case errors.Is(err, nats.ErrTimeout):
			if time.Since(active) >= stallCheck {
				active = time.Now()
				if info, err := cons.Info(ctx); err == nil && info.NumPending > 0 && info.NumWaiting == 0 {
					return errStalled
				}
			}
			continue
		case errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil:
			return nil
		case errors.Is(err, jetstream.ErrMsgIteratorClosed), errors.Is(err, jetstream.ErrConsumerDeleted):
			// The connection closed, or the consumer is gone: waiting
			// cannot help.
			return fmt.Errorf("consumer %s: %w", cons.CachedInfo().Name, err)
		case err != nil:
			log.Warn("waiting for messages", "err", err)
			wait(ctx, time.Second)
			continue
		}
		handOff(ctx, msgs, m, progress)
		active = time.Now()
	}
}

// handOff gives m to a free goroutine, reporting it in progress while none
// is. When ctx ends first, m goes back to the stream at once, for another
// replica, rather than after AckWait.
func handOff(ctx context.Context, msgs chan<- jetstream.Msg, m jetstream.Msg, progress time.Duration) {
	if ctx.Err() == nil {
		select {
		case msgs <- m:
			return
		default:
		}
	}
	t := time.NewTicker(progress)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = m.Nak()
			return
		case msgs <- m:
			return
		case <-t.C:
			_ = m.InProgress()
		}
	}
}

func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// worker runs a Handler on the messages of one consumer.
type worker struct {
	js    jetstream.JetStream
	cfg   ConsumerConfig
	h     Handler
	log   *slog.Logger
	m     *instruments
	attrs metric.MeasurementOption
}

func (w *worker) handle(ctx context.Context, m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		w.log.Error("not a JetStream message", "subject", m.Subject(), "err", err)
		return
	}
	start := time.Now()
	d := &Delivery{Header: m.Headers(), Deliveries: int(meta.NumDelivered), StreamSeq: meta.Sequence.Stream}
	if d.Deliveries > 1 {
		w.m.redelivered.Add(ctx, 1, w.attrs)
	}
	// The handler's spans continue the trace of the event's publisher.
	ctx, span := StartConsumerSpan(ctx, "consume "+w.cfg.Durable, m.Subject(), m.Headers())
	defer span.End()
	if d.Event, err = Decode(m.Subject(), m.Headers(), m.Data()); err != nil {
		err = Poison(err)
	} else {
		err = w.run(ctx, m, d)
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "handler failed")
	}
	outcome := w.settle(ctx, m, d, err)
	w.m.handled.Add(ctx, 1, w.attrs, metric.WithAttributes(attribute.String("outcome", outcome)))
	if outcome == "ack" {
		w.m.duration.Record(ctx, time.Since(start).Seconds(), w.attrs)
	}
}

// run calls the handler, reporting progress to JetStream meanwhile.
func (w *worker) run(ctx context.Context, m jetstream.Msg, d *Delivery) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(w.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := m.InProgress(); err != nil {
					w.log.Warn("reporting progress", "stream_seq", d.StreamSeq, "err", err)
				}
			}
		}
	})
	defer wg.Wait()
	defer close(done)
	return w.h(ctx, d)
}

// settle acknowledges, retries or dead-letters the message after its
// handler returned err, and says which: "ack", "retry" or "dead_letter".
func (w *worker) settle(ctx context.Context, m jetstream.Msg, d *Delivery, err error) string {
	// Settling outlives ctx: a handler's outcome is recorded even while
	// the process stops.
	sctx := context.WithoutCancel(ctx)
	log := w.log.With("subject", m.Subject(), "stream_seq", d.StreamSeq, "deliveries", d.Deliveries)
	if d.Event != nil {
		log = log.With("id", d.Event.ID, "type", d.Event.Type)
	}
	switch {
	case err == nil:
		if err := m.DoubleAck(sctx); err != nil {
			log.Warn("acknowledgement not confirmed; the event may be delivered again", "err", err)
			return "retry"
		}
		return "ack"
	case errors.Is(err, ErrPoison):
		return w.deadLetter(sctx, m, d, log, err)
	case ctx.Err() != nil:
		log.Info("stopping; the event goes back to the stream", "err", err)
		_ = m.Nak()
		return "retry"
	case w.cfg.MaxDeliver > 0 && d.Deliveries >= w.cfg.MaxDeliver:
		return w.deadLetter(sctx, m, d, log, err)
	default:
		delay := w.backoff(d.Deliveries)
		log.Warn("handler failed; the event will be delivered again", "err", err, "in", delay)
		if err := m.NakWithDelay(delay); err != nil {
			log.Warn("negative acknowledgement lost; JetStream redelivers after AckWait", "err", err)
		}
		return "retry"
	}
}

// deadLetter records the message as a dead letter, then terminates it; it
// returns "dead_letter", or "retry" when the dead letter could not be
// recorded.
func (w *worker) deadLetter(ctx context.Context, m jetstream.Msg, d *Delivery, log *slog.Logger, cause error) string {
	reason := headerValue(cause.Error())
	dl := deadLetterMsg(w.cfg.Stream, w.cfg.Durable, d.StreamSeq, m.Subject(), m.Headers(), m.Data(), uint64(d.Deliveries), reason)
	if err := publishDeadLetter(ctx, w.js, dl); err != nil {
		delay := w.backoff(d.Deliveries)
		log.Error("cannot record the dead letter; the event will be delivered again", "err", err, "cause", cause, "in", delay)
		_ = m.NakWithDelay(delay)
		return "retry"
	}
	w.m.deadLetters.Add(ctx, 1, w.attrs)
	log.Error("dead-lettered", "err", cause, "dead_letter", dl.Subject)
	if err := m.TermWithReason(reason); err != nil {
		// The dead letter is recorded; the message comes back after
		// AckWait and is handled again.
		log.Warn("termination lost", "err", err)
	}
	return "dead_letter"
}

// backoff is the delay before the delivery after the nth.
func (w *worker) backoff(n int) time.Duration {
	if w.cfg.Delay != nil {
		return w.cfg.Delay(max(n, 1))
	}
	return w.cfg.Backoff[min(max(n, 1), len(w.cfg.Backoff))-1]
}
