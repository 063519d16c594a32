// Command cluster is bench/cluster.sh's helper on a running pipeline (the
// local cluster of scripts/cluster.sh, or anything else on JetStream):
//
//	cluster triage --truth DIR/truth.json --since-ns NS [--resume CONSUMER] [--stall D] [--timeout D] [--label L] [--nats-url U]
//
// waits until every study of a `pacsflow synth` ground truth has its
// ai.triage event (for the latest generation of its study event), reading
// the events stream from --since-ns (Unix nanoseconds: when the script
// started sending) on and then following it, and prints
//
//	RESULT test=understand label=… studies=… stuck=… images=… triages=… send_to_triage_s=… received_to_triage_s=…
//	       studies_per_s=… images_per_s=… window_studies_per_s=… window_images_per_s=… first_received_s=… last_received_s=…
//
// Times are the stream's own timestamps of the events (the NATS servers
// run on this machine, so they share its clock with the script's
// --since-ns). send_to_triage_s runs from --since-ns to the last triage:
// sending, the study quiet period and the analysis; received_to_triage_s
// from the first of these studies' pacs.study.received to the last
// triage: the analysis, as the study events come in. studies_per_s and
// images_per_s are over the first, window_… over the second.
// first_received_s and last_received_s are the study events' times after
// --since-ns. triages counts every triage event of the studies (one each
// unless a study was reported again).
//
// With --resume CONSUMER (paused before sending with `cluster pause`), it
// ends that consumer's pause once every study's event is in the stream, so
// that the understand processes start together on the whole backlog, and
// adds
//
//	RESULT test=backlog label=… studies=… stuck=… images=… resume_to_first_triage_s=… first_to_last_triage_s=…
//	       backlog_studies_per_s=… backlog_images_per_s=…
//
// where the rates are those of the backlog's analysis at full speed: the
// studies and images after the first triaged study, over the time from
// its triage to the last; resume_to_first_triage_s is from the end of the
// pause (this machine's clock, as the stream's) to the first triage.
//
// A study that has no study event --stall (30 s) after the last study event
// of these studies came is stuck in ingest's study assembler (it would be
// reported only at ingest's --max-wait, 10 minutes): it prints a STUCK line
// naming them and counts the others only (stuck=… on the RESULT lines; with
// --resume, the pause then ends with those), or fails if that leaves fewer
// than half.
//
//	cluster pause --consumer understand [--stream PACSFLOW] [--nats-url U]
//
// pauses a durable consumer for 10 minutes (its processes keep running and
// get nothing until it is resumed).
//
//	cluster drop-consumer --stream PACSFLOW --consumer understand [--nats-url U]
//
// deletes a durable consumer (nothing if there is none): the script drops
// the understand consumer while its processes are down, so that the lag of
// a consumer nobody runs does not count as the pipeline's lag.
//
//	cluster lag --label L [--stream PACSFLOW] [--nats-url U]
//
// samples every second, until SIGTERM or SIGINT, how many events each
// durable consumer of the stream has not handled yet: not yet delivered
// (NumPending) plus delivered and not acknowledged (NumAckPending; the
// study assembler pulls ahead, so its backlog shows there). It prints the
// largest of each per consumer and
//
//	RESULT test=lag label=… max_lag=… consumer=… end_lag=…
//
// with the consumer that lagged most and the largest lag at the last
// sample. Only durable consumers count: bench/load's own max_pending also
// sees the ordered consumer with which it reads the instance events back
// after each run, whose pending is that run's instance count.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/bench/internal/benchkit"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/synth"
)

type options struct {
	cmd      string
	natsURL  string
	truth    string
	since    int64
	timeout  time.Duration
	label    string
	stream   string
	consumer string
	interval time.Duration
	resume   string
	stall    time.Duration
}

func parseOptions(args []string) (*options, error) {
	o := &options{}
	if len(args) > 0 {
		o.cmd = args[0]
	}
	switch o.cmd {
	case "triage", "drop-consumer", "pause", "lag":
	default:
		return nil, errors.New("usage: cluster triage|drop-consumer|pause|lag [flags] (see bench/cluster/main.go)")
	}
	fs := flag.NewFlagSet("cluster "+o.cmd, flag.ContinueOnError)
	fs.StringVar(&o.natsURL, "nats-url", nats.DefaultURL, "NATS server(s) of the pipeline, comma-separated")
	switch o.cmd {
	case "triage":
		fs.StringVar(&o.truth, "truth", "", "truth.json that pacsflow synth wrote with the studies sent (required)")
		fs.Int64Var(&o.since, "since-ns", 0, "when sending started, Unix nanoseconds (required)")
		fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "longest wait for every study's triage")
		fs.DurationVar(&o.stall, "stall", 30*time.Second, "leave out (STUCK) the studies that still lack their study event this long after the last one came")
		fs.StringVar(&o.label, "label", "-", "a label for the RESULT line")
		fs.StringVar(&o.resume, "resume", "", "resume this (paused) consumer of --stream once every study's event is stored")
		fs.StringVar(&o.stream, "stream", events.StreamConfig{}.StreamName(), "stream of the --resume consumer")
	case "drop-consumer", "pause":
		fs.StringVar(&o.stream, "stream", events.StreamConfig{}.StreamName(), "stream of the consumer")
		fs.StringVar(&o.consumer, "consumer", "", "the durable consumer (required)")
	case "lag":
		fs.StringVar(&o.stream, "stream", events.StreamConfig{}.StreamName(), "stream whose durable consumers are sampled")
		fs.StringVar(&o.label, "label", "-", "a label for the RESULT line")
		fs.DurationVar(&o.interval, "interval", time.Second, "time between samples")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.cmd == "triage" && (o.truth == "" || o.since <= 0) {
		return nil, errors.New("triage needs --truth and --since-ns")
	}
	if (o.cmd == "drop-consumer" || o.cmd == "pause") && o.consumer == "" {
		return nil, fmt.Errorf("%s needs --consumer", o.cmd)
	}
	return o, nil
}

func main() { benchkit.Main("cluster", parseOptions, run) }

func run(ctx context.Context, o *options) error {
	nc, err := nats.Connect(o.natsURL, nats.Name("pacsflow-bench-cluster"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if o.cmd == "drop-consumer" {
		err := js.DeleteConsumer(ctx, o.stream, o.consumer)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			fmt.Printf("consumer %s of %s: none\n", o.consumer, o.stream)
			return nil
		case err != nil:
			return fmt.Errorf("delete consumer %s of %s: %w", o.consumer, o.stream, err)
		}
		fmt.Printf("consumer %s of %s deleted\n", o.consumer, o.stream)
		return nil
	}
	if o.cmd == "pause" {
		if _, err := js.PauseConsumer(ctx, o.stream, o.consumer, time.Now().Add(10*time.Minute)); err != nil {
			return fmt.Errorf("pause consumer %s of %s: %w", o.consumer, o.stream, err)
		}
		fmt.Printf("consumer %s of %s paused\n", o.consumer, o.stream)
		return nil
	}
	if o.cmd == "lag" {
		return sampleLag(ctx, o, js)
	}
	return waitTriage(ctx, o, js)
}

// sampleLag samples the durable consumers' lag until ctx ends, then prints it.
func sampleLag(ctx context.Context, o *options, js jetstream.JetStream) error {
	// The samples outlive ctx: the last one is taken after the signal.
	bg := context.WithoutCancel(ctx)
	stream, err := js.Stream(bg, o.stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", o.stream, err)
	}
	// Per consumer, the most seen of: not delivered, delivered and not
	// acknowledged, and both together (its lag: events it has not handled).
	pending, ackPending, lag := map[string]uint64{}, map[string]uint64{}, map[string]uint64{}
	var names []string
	sample := func() (most uint64, err error) {
		sctx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		lister := stream.ListConsumers(sctx)
		for ci := range lister.Info() {
			if ci.Config.Durable == "" {
				continue // ephemeral: a reader such as bench/load's, not the pipeline
			}
			if _, ok := lag[ci.Name]; !ok {
				names = append(names, ci.Name)
			}
			l := ci.NumPending + uint64(ci.NumAckPending)
			pending[ci.Name] = max(pending[ci.Name], ci.NumPending)
			ackPending[ci.Name] = max(ackPending[ci.Name], uint64(ci.NumAckPending))
			lag[ci.Name] = max(lag[ci.Name], l)
			most = max(most, l)
		}
		return most, lister.Err()
	}
	if _, err := sample(); err != nil {
		return err
	}
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			if _, err := sample(); err != nil {
				fmt.Fprintf(os.Stderr, "cluster lag: %v\n", err) // a busy cluster may miss one
			}
		}
	}
	end, err := sample()
	if err != nil {
		return err
	}
	most, worst := uint64(0), "-"
	for _, n := range names {
		fmt.Printf("lag %s: consumer %s: at most %d events not handled (%d not delivered, %d not acknowledged)\n",
			o.label, n, lag[n], pending[n], ackPending[n])
		if lag[n] > most || worst == "-" {
			most, worst = lag[n], n
		}
	}
	fmt.Printf("RESULT test=lag label=%s max_lag=%d consumer=%s end_lag=%d\n", o.label, most, worst, end)
	return nil
}

// study is what has been seen of one study of the ground truth.
type study struct {
	images      int
	received    time.Time // its first study event
	generation  int       // the latest generation of its study events
	triaged     int       // the generation of its latest triage
	triageTime  time.Time // when that triage was stored
	triageCount int
}

var (
	errAllTriaged = errors.New("every study triaged")
	errTimeout    = errors.New("--timeout passed")
)

// waiter follows the studies of one run; mu guards everything.
type waiter struct {
	o         *options
	js        jetstream.JetStream
	mu        sync.Mutex
	studies   map[string]*study // those still counted
	stuck     []string          // those without a study event after --stall
	all       int
	lastEvent time.Time // when the last study event of ours came (this clock)
	resumed   time.Time // when the pause of --resume ended
}

// advance ends the pause once every counted study has its study event, and
// reports whether every counted study has its triage. Called with mu held.
func (w *waiter) advance(ctx context.Context) (bool, error) {
	received, triaged := true, true
	for _, s := range w.studies {
		received = received && s.generation > 0
		triaged = triaged && s.generation > 0 && s.triaged >= s.generation
	}
	if w.o.resume != "" && w.resumed.IsZero() && received {
		// Not ResumeConsumer: nats-server (2.15) then hands out nothing
		// until a new message or pull request comes, seconds later; a
		// pause that ends wakes the consumer when its timer fires.
		at := time.Now().Add(300 * time.Millisecond)
		if _, err := w.js.PauseConsumer(ctx, w.o.stream, w.o.resume, at); err != nil {
			return false, fmt.Errorf("end the pause of consumer %s of %s: %w", w.o.resume, w.o.stream, err)
		}
		w.resumed = at
	}
	return triaged, nil
}

// event takes in one stored event.
func (w *waiter) event(ctx context.Context, m *events.Stored) error {
	e, err := m.Event()
	if err != nil {
		return nil // not an event of ours
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.studies[e.Subject]
	if s == nil {
		return nil
	}
	var d struct {
		Generation int `json:"generation"`
	}
	if err := json.Unmarshal(e.Data, &d); err != nil {
		return fmt.Errorf("%s of %s: %w", e.Type, e.Subject, err)
	}
	if strings.HasPrefix(m.Subject, events.SubjectAITriage+".") {
		s.triageCount++
		if d.Generation >= s.triaged {
			s.triaged, s.triageTime = d.Generation, m.Time
		}
	} else {
		if s.received.IsZero() {
			s.received = m.Time
		}
		s.generation = max(s.generation, d.Generation)
		w.lastEvent = time.Now()
	}
	done, err := w.advance(ctx)
	if err != nil {
		return err
	}
	if done {
		return errAllTriaged
	}
	return nil
}

// watch gives up on the studies without a study event --stall after the
// last study event came, once, and counts the others only.
func (w *waiter) watch(ctx context.Context, stop context.CancelCauseFunc) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		w.mu.Lock()
		if time.Since(w.lastEvent) >= w.o.stall {
			for uid, s := range w.studies {
				if s.generation == 0 {
					w.stuck = append(w.stuck, uid)
					delete(w.studies, uid)
				}
			}
		}
		if len(w.stuck) == 0 {
			w.mu.Unlock()
			continue
		}
		sort.Strings(w.stuck)
		fmt.Printf("STUCK: %d of %d studies have no study event %v after the last one came (ingest's study assembler did not report them); counting the %d others: %s\n",
			len(w.stuck), w.all, w.o.stall, len(w.studies), strings.Join(w.stuck, " "))
		var err error
		done := false
		if len(w.studies)*2 < w.all {
			err = fmt.Errorf("%d of %d studies without a study event: too many to count the others", len(w.stuck), w.all)
		} else if done, err = w.advance(ctx); done {
			err = errAllTriaged
		}
		w.mu.Unlock()
		if err != nil {
			stop(err)
		}
		return
	}
}

func waitTriage(ctx context.Context, o *options, js jetstream.JetStream) error {
	b, err := os.ReadFile(o.truth)
	if err != nil {
		return err
	}
	var truth synth.Truth
	if err := json.Unmarshal(b, &truth); err != nil {
		return fmt.Errorf("%s: %w", o.truth, err)
	}
	w := &waiter{o: o, js: js, studies: make(map[string]*study, len(truth.Studies)), all: len(truth.Studies), lastEvent: time.Now()}
	for _, s := range truth.Studies {
		n := 0
		for _, f := range s.Files {
			if f.Modality == "CR" || f.Modality == "DX" { // what the reference model accepts
				n++
			}
		}
		w.studies[s.StudyInstanceUID] = &study{images: n}
	}
	if w.all == 0 {
		return fmt.Errorf("%s lists no studies", o.truth)
	}
	since := time.Unix(0, o.since)
	wctx, cancel := context.WithTimeoutCause(ctx, o.timeout, errTimeout)
	defer cancel()
	sctx, stop := context.WithCancelCause(wctx)
	defer stop(nil)
	go w.watch(sctx, stop)
	err = events.ReplayFrom(sctx, js, events.ReplayConfig{
		FilterSubjects: []string{events.SubjectStudyReceived + ".>", events.SubjectStudyUpdated + ".>", events.SubjectAITriage + ".>"},
		// A second early: the margin costs only events skipped.
		StartTime: since.Add(-time.Second),
		Follow:    true,
	}, func(m *events.Stored) error { return w.event(sctx, m) })
	if cause := context.Cause(sctx); !errors.Is(err, errAllTriaged) && cause != nil {
		err = cause // the watchdog's (errAllTriaged too) or the timeout's
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !errors.Is(err, errAllTriaged) {
		if o.resume != "" && w.resumed.IsZero() {
			// Leave the cluster working: end the pause.
			if _, perr := js.PauseConsumer(context.WithoutCancel(ctx), o.stream, o.resume, time.Now()); perr != nil {
				fmt.Fprintf(os.Stderr, "cluster triage: ending the pause of %s: %v\n", o.resume, perr)
			}
		}
		if err == nil || errors.Is(err, errTimeout) {
			missing := 0
			for _, s := range w.studies {
				if s.generation == 0 || s.triaged < s.generation {
					missing++
				}
			}
			return fmt.Errorf("%d of %d studies without a triage after %v", missing, w.all, o.timeout)
		}
		return err
	}
	var firstRecv, lastRecv, firstTriage, lastTriage time.Time
	triages, images, firstImages := 0, 0, 0
	for _, s := range w.studies {
		if firstTriage.IsZero() || s.triageTime.Before(firstTriage) {
			firstTriage, firstImages = s.triageTime, s.images
		}
		if firstRecv.IsZero() || s.received.Before(firstRecv) {
			firstRecv = s.received
		}
		if s.received.After(lastRecv) {
			lastRecv = s.received
		}
		if s.triageTime.After(lastTriage) {
			lastTriage = s.triageTime
		}
		triages += s.triageCount
		images += s.images
	}
	e2e := lastTriage.Sub(since).Seconds()
	window := lastTriage.Sub(firstRecv).Seconds()
	n := float64(len(w.studies))
	fmt.Printf("RESULT test=understand label=%s studies=%d stuck=%d images=%d triages=%d send_to_triage_s=%.2f received_to_triage_s=%.2f "+
		"studies_per_s=%.2f images_per_s=%.1f window_studies_per_s=%.2f window_images_per_s=%.1f first_received_s=%.2f last_received_s=%.2f\n",
		o.label, len(w.studies), len(w.stuck), images, triages, e2e, window, n/e2e, float64(images)/e2e, n/window, float64(images)/window,
		firstRecv.Sub(since).Seconds(), lastRecv.Sub(since).Seconds())
	if !w.resumed.IsZero() {
		b := lastTriage.Sub(firstTriage).Seconds()
		if b <= 0 {
			return errors.New("the backlog's triages all have one time: too few studies for a rate")
		}
		fmt.Printf("RESULT test=backlog label=%s studies=%d stuck=%d images=%d resume_to_first_triage_s=%.2f first_to_last_triage_s=%.2f backlog_studies_per_s=%.2f backlog_images_per_s=%.1f\n",
			o.label, len(w.studies), len(w.stuck), images, firstTriage.Sub(w.resumed).Seconds(), b, (n-1)/b, float64(images-firstImages)/b)
	}
	return nil
}
