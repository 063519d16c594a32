package events

// Dead letters.
//
// A message that a consumer gives up on lands in the dead-letter stream
// <events stream>_DLQ (PACSFLOW_DLQ) on the subject
// dlq.<consumer>.<stream sequence>: dlq.<consumer>.> holds a consumer's dead
// letters, and the last token makes "is this one recorded?" a direct
// look-up. A dead letter is the original message, its data and headers
// (less JetStream's own Nats-* headers), with these headers added:
//
//	Pacsflow-Dlq-Consumer    the consumer that gave up
//	Pacsflow-Dlq-Error       why: the handler's error, the termination reason, or the deliveries exhausted
//	Pacsflow-Dlq-Deliveries  how many times it was delivered
//	Pacsflow-Dlq-Stream      the stream it is in
//	Pacsflow-Dlq-Stream-Seq  its sequence there
//	Pacsflow-Dlq-Subject     its subject (absent when the message was gone when recorded)
//	Pacsflow-Dlq-Time        when the dead letter was recorded, RFC 3339
//	Nats-Msg-Id              dlq/<consumer>/<stream sequence>
//
// Two paths record dead letters, so that one remains when the other cannot
// run. Consume records a message's dead letter before terminating it. And
// JetStream itself announces every message a consumer gave up on, in
// advisories that the advisory stream <events stream>_ADVISORIES captures
// whether or not any service runs: MAX_DELIVERIES when a message was
// delivered MaxDeliver times without an outcome (its service was down,
// crashed on it, or hung), MSG_TERMINATED when any client terminated it,
// with the reason, or JetStream deleted it while pending. The reconciler
// (RunDeadLetterReconciler) reads them and records the dead letters not
// yet recorded. JetStream publishes MAX_DELIVERIES when it would deliver
// the message once more: at the first pull on the consumer after the last
// delivery's AckWait. The dead letters of a stopped service are therefore
// recorded when one of its replicas pulls again, at its restart. The Nats-Msg-Id makes
// JetStream store a dead letter recorded by both paths once; past the
// duplicate window, the reconciler finds the earlier one by its subject.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Dead-letter headers, added to the original message's.
const (
	HeaderDLQConsumer   = "Pacsflow-Dlq-Consumer"
	HeaderDLQError      = "Pacsflow-Dlq-Error"
	HeaderDLQDeliveries = "Pacsflow-Dlq-Deliveries"
	HeaderDLQStream     = "Pacsflow-Dlq-Stream"
	HeaderDLQStreamSeq  = "Pacsflow-Dlq-Stream-Seq"
	HeaderDLQSubject    = "Pacsflow-Dlq-Subject"
	HeaderDLQTime       = "Pacsflow-Dlq-Time"
	dlqHeaderPrefix     = "Pacsflow-Dlq-"
)

// SubjectDeadLetters is the root of the dead-letter subjects.
const SubjectDeadLetters = "dlq"

// JetStream's advisories of messages a consumer gave up on, as published by
// nats-server (server/jetstream_api.go, jetstream_events.go):
// <prefix>.<stream>.<consumer>.
const (
	advisoryMaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
	advisoryTerminated    = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"
	advisoryTypeTerminate = "io.nats.jetstream.advisory.v1.terminated"
)

// maxErrorLen bounds the error header: the whole message must stay within
// the server's maximum payload, and a reason is read by people.
const maxErrorLen = 1024

// DeadLetterSubject is the subject of the dead letter of the message at
// streamSeq that consumer gave up on.
func DeadLetterSubject(consumer string, streamSeq uint64) string {
	return SubjectDeadLetters + "." + consumer + "." + strconv.FormatUint(streamSeq, 10)
}

// DeadLetterStream is the name of the dead-letter stream: the events
// stream's, with "_DLQ".
func (c StreamConfig) DeadLetterStream() string { return c.withDefaults().Name + "_DLQ" }

// AdvisoryStream is the name of the stream of JetStream's advisories about
// the events stream's consumers: the events stream's, with "_ADVISORIES".
func (c StreamConfig) AdvisoryStream() string { return c.withDefaults().Name + "_ADVISORIES" }

// provisionDeadLetters creates or updates the dead-letter and advisory
// streams of cfg (with defaults).
func provisionDeadLetters(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) error {
	lim := cfg.DeadLetters
	if lim.MaxAge > 0 && lim.Duplicates > lim.MaxAge {
		lim.Duplicates = lim.MaxAge // JetStream refuses a longer window
	}
	for _, sc := range []jetstream.StreamConfig{{
		Name:        cfg.DeadLetterStream(),
		Description: "pacsflow dead letters: dlq.<consumer>.<stream sequence>",
		Subjects:    []string{SubjectDeadLetters + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    cfg.Replicas,
		MaxAge:      lim.MaxAge,
		MaxBytes:    orUnlimited(lim.MaxBytes),
		Duplicates:  lim.Duplicates,
		// Refuse a dead letter rather than drop an older one: a refused
		// one stays in the advisory stream, for the reconciler.
		Discard: jetstream.DiscardNew,
	}, {
		Name:        cfg.AdvisoryStream(),
		Description: "JetStream advisories of the " + cfg.Name + " messages consumers gave up on, for the dead-letter reconciler",
		Subjects:    []string{advisoryMaxDeliveries + "." + cfg.Name + ".*", advisoryTerminated + "." + cfg.Name + ".*"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    cfg.Replicas,
		MaxAge:      lim.MaxAge,
		MaxBytes:    orUnlimited(lim.MaxBytes),
		Discard:     jetstream.DiscardOld,
	}} {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// deadLetterMsg builds the dead letter of the message at seq of stream,
// which consumer gave up on after the given deliveries. subject, h and data
// are the original's; subject is empty when it is gone.
func deadLetterMsg(stream, consumer string, seq uint64, subject string, h nats.Header, data []byte, deliveries uint64, reason string) *nats.Msg {
	m := nats.NewMsg(DeadLetterSubject(consumer, seq))
	for k, v := range h {
		// JetStream's own headers would steer the dead letter's publish
		// (expected sequences, TTL, roll-up) or its de-duplication.
		if strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		m.Header[k] = slices.Clone(v)
	}
	m.Header.Set(HeaderDLQConsumer, consumer)
	m.Header.Set(HeaderDLQError, headerValue(reason))
	m.Header.Set(HeaderDLQDeliveries, strconv.FormatUint(deliveries, 10))
	m.Header.Set(HeaderDLQStream, stream)
	m.Header.Set(HeaderDLQStreamSeq, strconv.FormatUint(seq, 10))
	if subject != "" {
		m.Header.Set(HeaderDLQSubject, subject)
	}
	m.Header.Set(HeaderDLQTime, time.Now().UTC().Format(time.RFC3339Nano))
	m.Header.Set(nats.MsgIdHdr, "dlq/"+consumer+"/"+strconv.FormatUint(seq, 10))
	m.Data = data
	return m
}

// headerValue makes s one bounded header line: a line break would end the
// header.
func headerValue(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxErrorLen {
		s = strings.ToValidUTF8(s[:maxErrorLen], "") + "…"
	}
	return s
}

func publishDeadLetter(ctx context.Context, js jetstream.JetStream, m *nats.Msg) error {
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish dead letter %s: %w", m.Subject, err)
	}
	return nil
}

// DeadLetter is a message of the dead-letter stream.
type DeadLetter struct {
	// Seq is its sequence in the dead-letter stream.
	Seq uint64
	// Time is when it was recorded.
	Time time.Time
	// Consumer gave up on the message; Error says why, after Deliveries.
	Consumer   string
	Error      string
	Deliveries int
	// Stream and StreamSeq locate the original message; Subject is where it
	// was published, empty when it was gone when recorded.
	Stream    string
	StreamSeq uint64
	Subject   string
	// Header and Data are the original's (without its Nats-Msg-Id).
	Header nats.Header
	Data   []byte
}

// parseDeadLetter reads a dead letter. Malformed numbers read as 0: a
// dead letter is shown even when someone else's tool wrote it.
func parseDeadLetter(s *Stored) *DeadLetter {
	d := &DeadLetter{
		Seq: s.Seq, Consumer: s.Header.Get(HeaderDLQConsumer), Error: s.Header.Get(HeaderDLQError),
		Stream: s.Header.Get(HeaderDLQStream), Subject: s.Header.Get(HeaderDLQSubject),
		Header: nats.Header{}, Data: s.Data,
	}
	d.Deliveries, _ = strconv.Atoi(s.Header.Get(HeaderDLQDeliveries))
	d.StreamSeq, _ = strconv.ParseUint(s.Header.Get(HeaderDLQStreamSeq), 10, 64)
	if t, err := time.Parse(time.RFC3339Nano, s.Header.Get(HeaderDLQTime)); err == nil {
		d.Time = t
	} else {
		d.Time = s.Time
	}
	for k, v := range s.Header {
		if !strings.HasPrefix(k, dlqHeaderPrefix) && k != nats.MsgIdHdr {
			d.Header[k] = v
		}
	}
	return d
}

// ListDeadLetters calls fn with each dead letter of consumer (every
// consumer's if empty), oldest first, and returns at the end of the
// dead-letter stream or at fn's first error.
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, streams StreamConfig, consumer string, fn func(*DeadLetter) error) error {
	filter := SubjectDeadLetters + ".>"
	if consumer != "" {
		filter = SubjectDeadLetters + "." + consumer + ".>"
	}
	return ReplayFrom(ctx, js, ReplayConfig{Stream: streams.DeadLetterStream(), FilterSubjects: []string{filter}},
		func(s *Stored) error { return fn(parseDeadLetter(s)) })
}

// GetDeadLetter reads the dead letter at seq of the dead-letter stream.
func GetDeadLetter(ctx context.Context, js jetstream.JetStream, streams StreamConfig, seq uint64) (*DeadLetter, error) {
	st, err := js.Stream(ctx, streams.DeadLetterStream())
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", streams.DeadLetterStream(), err)
	}
	m, err := st.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return parseDeadLetter(&Stored{Seq: m.Sequence, Time: m.Time, Subject: m.Subject, Header: m.Header, Data: m.Data}), nil
}

// ReplayDeadLetter publishes the original of d again on its subject, with
// its headers (the ce- attributes, the trace context), so that the
// consumers of that subject get it once more: every consumer of it, not
// only d.Consumer, so handlers must be idempotent. Its Nats-Msg-Id is
// <ce-id>/replay/<dead letter seq>: new, so that JetStream does not take it
// for the original, and the same on a second replay of d within the
// duplicate window, which is then stored once (duplicate reports it). With
// purge, the dead letter is deleted once the replay is stored.
func ReplayDeadLetter(ctx context.Context, js jetstream.JetStream, streams StreamConfig, d *DeadLetter, purge bool) (duplicate bool, err error) {
	if d.Subject == "" {
		return false, fmt.Errorf("dead letter %d keeps no original: it was gone from %s when recorded", d.Seq, d.Stream)
	}
	stream := d.Stream
	if stream == "" {
		stream = streams.withDefaults().Name
	}
	m := nats.NewMsg(d.Subject)
	for k, v := range d.Header {
		m.Header[k] = slices.Clone(v)
	}
	id := d.Header.Get(HeaderID)
	if id == "" {
		id = "dlq/" + d.Consumer + "/" + strconv.FormatUint(d.StreamSeq, 10)
	}
	m.Header.Set(nats.MsgIdHdr, id+"/replay/"+strconv.FormatUint(d.Seq, 10))
	m.Data = d.Data
	ack, err := js.PublishMsg(ctx, m, jetstream.WithExpectStream(stream))
	if err != nil {
		return false, fmt.Errorf("replay dead letter %d to %s: %w", d.Seq, d.Subject, err)
	}
	if purge {
		st, err := js.Stream(ctx, streams.DeadLetterStream())
		if err == nil {
			err = st.DeleteMsg(ctx, d.Seq)
		}
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return ack.Duplicate, fmt.Errorf("replayed dead letter %d, but could not delete it: %w", d.Seq, err)
		}
	}
	return ack.Duplicate, nil
}

// ReconcilerConfig configures RunDeadLetterReconciler.
type ReconcilerConfig struct {
	// Streams names the streams, as given to Provision.
	Streams StreamConfig
	// Durable names the reconciler's consumer on the advisory stream;
	// several reconcilers share it. Default "pacsflow-dlq-reconciler".
	Durable string
	// Logger receives what was recorded. Default slog.Default().
	Logger *slog.Logger
}

// advisory is the JSON of both advisories (nats-server's
// JSConsumerDeliveryExceededAdvisory and
// JSConsumerDeliveryTerminatedAdvisory); only the latter has a reason.
type advisory struct {
	Type       string `json:"type"`
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
	Reason     string `json:"reason"`
}

func (a *advisory) cause() string {
	switch {
	case a.Type != advisoryTypeTerminate:
		return fmt.Sprintf("delivered %d times without being acknowledged (MaxDeliver)", a.Deliveries)
	case a.Reason != "":
		return a.Reason
	}
	return "terminated without a reason"
}

// RunDeadLetterReconciler records the dead letters of the messages that
// JetStream's advisories report and that are not recorded yet: those of a
// consumer whose service was down, crashed or hung while its messages ran
// out of deliveries, those terminated by clients other than Consume, and
// those Consume could not record. It runs until ctx ends. Provision the
// streams first. Running it in every service is safe: the replicas share
// one durable consumer, and a dead letter is recorded once.
func RunDeadLetterReconciler(ctx context.Context, js jetstream.JetStream, cfg ReconcilerConfig) error {
	streams := cfg.Streams.withDefaults()
	if cfg.Durable == "" {
		cfg.Durable = "pacsflow-dlq-reconciler"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &reconciler{js: js, log: cfg.Logger.With("reconciler", cfg.Durable)}
	var err error
	if r.events, err = js.Stream(ctx, streams.Name); err != nil {
		return fmt.Errorf("dead-letter reconciler: stream %s: %w", streams.Name, err)
	}
	if r.dlq, err = js.Stream(ctx, streams.DeadLetterStream()); err != nil {
		return fmt.Errorf("dead-letter reconciler: stream %s: %w", streams.DeadLetterStream(), err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, streams.AdvisoryStream(), jetstream.ConsumerConfig{
		Durable:     cfg.Durable,
		Description: "pacsflow: records the dead letters that advisories report",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     reconcilerAckWait,
		// An advisory is retried until its dead letter is recorded: it is
		// the last trace of the message.
		MaxDeliver:    -1,
		MaxAckPending: 256,
	})
	if err != nil {
		return fmt.Errorf("dead-letter reconciler: consumer %s on %s: %w", cfg.Durable, streams.AdvisoryStream(), err)
	}
	return pull(ctx, cons, 1, reconcilerAckWait/3, r.log, r.handle)
}

type reconciler struct {
	js          jetstream.JetStream
	events, dlq jetstream.Stream
	log         *slog.Logger
}

// reconcilerAckWait is the AckWait of the reconciler's consumer.
const reconcilerAckWait = 30 * time.Second

// reconcileBackoff bounds the retries of an advisory whose dead letter
// cannot be recorded yet.
var reconcileBackoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second}

func (r *reconciler) handle(ctx context.Context, m jetstream.Msg) {
	var a advisory
	if err := json.Unmarshal(m.Data(), &a); err != nil || a.Consumer == "" || a.StreamSeq == 0 {
		r.log.Error("not a consumer advisory; dropped", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	log := r.log.With("consumer", a.Consumer, "stream", a.Stream, "stream_seq", a.StreamSeq)
	recorded, err := r.record(ctx, &a)
	switch {
	case err != nil && ctx.Err() != nil:
		_ = m.Nak()
	case err != nil:
		n := 1
		if meta, merr := m.Metadata(); merr == nil {
			n = int(meta.NumDelivered)
		}
		delay := reconcileBackoff[min(n, len(reconcileBackoff))-1]
		log.Warn("cannot record the dead letter yet", "err", err, "retry_in", delay)
		_ = m.NakWithDelay(delay)
	default:
		if recorded {
			log.Error("dead-lettered", "err", a.cause(), "dead_letter", DeadLetterSubject(a.Consumer, a.StreamSeq))
		}
		if err := m.DoubleAck(context.WithoutCancel(ctx)); err != nil {
			log.Warn("acknowledgement not confirmed; the advisory may come again", "err", err)
		}
	}
}

// record publishes the dead letter of a, unless it is recorded already.
func (r *reconciler) record(ctx context.Context, a *advisory) (recorded bool, err error) {
	orig, err := r.events.GetMsg(ctx, a.StreamSeq)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, fmt.Errorf("read message %d of %s: %w", a.StreamSeq, a.Stream, err)
	}
	if err != nil {
		orig = nil // gone: its max age passed, or it was deleted
	}
	subject := DeadLetterSubject(a.Consumer, a.StreamSeq)
	old, err := r.dlq.GetLastMsgForSubject(ctx, subject)
	switch {
	case err == nil:
		// The same ce-id: the same message, not one that took its
		// sequence in a re-created stream.
		if orig == nil || old.Header.Get(HeaderID) == orig.Header.Get(HeaderID) {
			return false, nil
		}
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return false, fmt.Errorf("look up %s: %w", subject, err)
	}
	var m *nats.Msg
	if orig != nil {
		m = deadLetterMsg(a.Stream, a.Consumer, a.StreamSeq, orig.Subject, orig.Header, orig.Data, a.Deliveries, a.cause())
	} else {
		m = deadLetterMsg(a.Stream, a.Consumer, a.StreamSeq, "", nil, nil, a.Deliveries, a.cause()+"; the message is no longer in "+a.Stream)
	}
	if err := publishDeadLetter(ctx, r.js, m); err != nil {
		return false, err
	}
	return true, nil
}
