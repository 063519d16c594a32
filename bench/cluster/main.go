// Command cluster is bench/cluster.sh's helper on a running pipeline (the
// local cluster of scripts/cluster.sh, or anything else on JetStream):
//
//	cluster triage --truth DIR/truth.json --since-ns NS [--nats-url U] [--timeout D] [--label L]
//
// waits until every study of a `pacsflow synth` ground truth has its
// ai.triage event (for the latest generation of its study event), reading
// the events stream from --since-ns (Unix nanoseconds: when the script
// started sending) on and then following it, and prints
//
//	RESULT test=understand label=… studies=… images=… triages=… send_to_triage_s=… received_to_triage_s=…
//	       studies_per_s=… images_per_s=… window_studies_per_s=… window_images_per_s=… first_received_s=… last_received_s=…
//
// Times are the stream's own timestamps of the events (the NATS servers
// run on this machine, so they share its clock with the script's
// --since-ns). send_to_triage_s runs from --since-ns to the last triage:
// sending, the study quiet period and the analysis; received_to_triage_s
// from the first of these studies' pacs.study.received to the last
// triage: the analysis, as the study events come in. studies_per_s and
// images_per_s are over the first, window_… over the second. first_received_s and last_received_s are
// the study events' times after --since-ns.
//
// With --resume CONSUMER (paused before sending with `cluster pause`), it
// resumes that consumer once every study's event is in the stream, so that
// the understand processes start together on the whole backlog, and adds
//
//	RESULT test=backlog label=… studies=… images=… resume_to_first_triage_s=… first_to_last_triage_s=…
//	       backlog_studies_per_s=… backlog_images_per_s=…
//
// where the rates are those of the backlog's analysis at full speed: the
// studies and images after the first triaged study, over the time from
// its triage to the last; resume_to_first_triage_s is from the end of the
// pause (this machine's clock, as the stream's) to the first triage.
//
//	cluster pause --consumer understand [--stream PACSFLOW] [--nats-url U]
//
// pauses a durable consumer for 10 minutes (its processes keep running and
// get nothing until it is resumed).
//
// A study that has no study event --stall (30 s) after the last study event
// of these studies came is stuck in ingest's study assembler (it would be
// reported only at --max-wait, 10 minutes): it prints a STUCK line naming
// them and fails, rather than wait for the timeout.
//
//	cluster drain --consumer understand [--stream PACSFLOW] [--timeout 2m] [--nats-url U]
//
// waits until the consumer has nothing pending and nothing unacknowledged.
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
// durable consumer of the stream has not yet been delivered (NumPending)
// and has been delivered but not acknowledged (NumAckPending), then prints
// the largest of each per consumer and
//
//	RESULT test=lag label=… max_pending=… consumer=… end_pending=…
//
// with the consumer that lagged most and the largest pending at the last
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
	case "triage", "drop-consumer", "pause", "drain", "lag":
	default:
		return nil, errors.New("usage: cluster triage|drop-consumer|pause|drain|lag [flags] (see bench/cluster/main.go)")
	}
	fs := flag.NewFlagSet("cluster "+o.cmd, flag.ContinueOnError)
	fs.StringVar(&o.natsURL, "nats-url", nats.DefaultURL, "NATS server(s) of the pipeline, comma-separated")
	switch o.cmd {
	case "triage":
		fs.StringVar(&o.truth, "truth", "", "truth.json that pacsflow synth wrote with the studies sent (required)")
		fs.Int64Var(&o.since, "since-ns", 0, "when sending started, Unix nanoseconds (required)")
		fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "longest wait for every study's triage")
		fs.DurationVar(&o.stall, "stall", 30*time.Second, "give up (STUCK) when studies still lack their study event this long after the last one came")
		fs.StringVar(&o.label, "label", "-", "a label for the RESULT line")
		fs.StringVar(&o.resume, "resume", "", "resume this (paused) consumer of --stream once every study's event is stored")
		fs.StringVar(&o.stream, "stream", events.StreamConfig{}.StreamName(), "stream of the --resume consumer")
	case "drop-consumer", "pause", "drain":
		fs.StringVar(&o.stream, "stream", events.StreamConfig{}.StreamName(), "stream of the consumer")
		fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "drain: longest wait")
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
	if (o.cmd == "drop-consumer" || o.cmd == "pause" || o.cmd == "drain") && o.consumer == "" {
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
	if o.cmd == "drain" {
		return drain(ctx, o, js)
	}
	if o.cmd == "lag" {
		return sampleLag(ctx, o, js)
	}
	return waitTriage(ctx, o, js)
}

// drain waits until the consumer has nothing pending or unacknowledged.
func drain(ctx context.Context, o *options, js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	for {
		c, err := js.Consumer(ctx, o.stream, o.consumer)
		if err != nil {
			return fmt.Errorf("consumer %s of %s: %w", o.consumer, o.stream, err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			fmt.Printf("consumer %s of %s: drained\n", o.consumer, o.stream)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consumer %s of %s: %d pending, %d unacknowledged after %v", o.consumer, o.stream, info.NumPending, info.NumAckPending, o.timeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// sampleLag samples the durable consumers' lag until ctx ends, then prints it.
func sampleLag(ctx context.Context, o *options, js jetstream.JetStream) error {
	// The samples outlive ctx: the last one is taken after the signal.
	bg := context.WithoutCancel(ctx)
	stream, err := js.Stream(bg, o.stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", o.stream, err)
	}
	pending, ackPending := map[string]uint64{}, map[string]int{}
	var names []string
	sample := func() (total uint64, err error) {
		sctx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		lister := stream.ListConsumers(sctx)
		for ci := range lister.Info() {
			if ci.Config.Durable == "" {
				continue // ephemeral: a reader such as bench/load's, not the pipeline
			}
			if _, ok := pending[ci.Name]; !ok {
				names = append(names, ci.Name)
			}
			pending[ci.Name] = max(pending[ci.Name], ci.NumPending)
			ackPending[ci.Name] = max(ackPending[ci.Name], ci.NumAckPending)
			total = max(total, ci.NumPending)
		}
		return total, lister.Err()
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
		fmt.Printf("lag %s: consumer %s: at most %d events not delivered, %d not acknowledged\n", o.label, n, pending[n], ackPending[n])
		if pending[n] > most || worst == "-" {
			most, worst = pending[n], n
		}
	}
	fmt.Printf("RESULT test=lag label=%s max_pending=%d consumer=%s end_pending=%d\n", o.label, most, worst, end)
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

// stuckError names the studies that got no study event.
type stuckError struct {
	stuck []string
	of    int
	after time.Duration
}

func (e *stuckError) Error() string {
	return fmt.Sprintf("%d of %d studies without a study event (stuck)", len(e.stuck), e.of)
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
	studies := make(map[string]*study, len(truth.Studies))
	images := 0
	for _, s := range truth.Studies {
		n := 0
		for _, f := range s.Files {
			if f.Modality == "CR" || f.Modality == "DX" { // what the reference model accepts
				n++
			}
		}
		studies[s.StudyInstanceUID] = &study{images: n}
		images += n
	}
	if len(studies) == 0 {
		return fmt.Errorf("%s lists no studies", o.truth)
	}
	since := time.Unix(0, o.since)
	wctx, cancel := context.WithTimeoutCause(ctx, o.timeout, errTimeout)
	defer cancel()
	sctx, stalled := context.WithCancelCause(wctx)
	defer stalled(nil)
	// The watchdog: the studies were all sent before this started, so their
	// study events come within the quiet period and some processing; a
	// study still without one after --stall without any study event of
	// ours is stuck in ingest's study assembler.
	var mu sync.Mutex // guards the studies and lastEvent
	lastEvent := time.Now()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			mu.Lock()
			var stuck []string
			if time.Since(lastEvent) >= o.stall {
				for uid, s := range studies {
					if s.generation == 0 {
						stuck = append(stuck, uid)
					}
				}
			}
			mu.Unlock()
			if len(stuck) > 0 {
				sort.Strings(stuck)
				stalled(&stuckError{stuck: stuck, of: len(studies), after: o.stall})
				return
			}
		}
	}()
	var resumed time.Time
	allReceived := func() bool {
		for _, s := range studies {
			if s.generation == 0 {
				return false
			}
		}
		return true
	}
	done := func() bool {
		for _, s := range studies {
			if s.generation == 0 || s.triaged < s.generation {
				return false
			}
		}
		return true
	}
	err = events.ReplayFrom(sctx, js, events.ReplayConfig{
		FilterSubjects: []string{events.SubjectStudyReceived + ".>", events.SubjectStudyUpdated + ".>", events.SubjectAITriage + ".>"},
		// A second early: the margin costs only events skipped below.
		StartTime: since.Add(-time.Second),
		Follow:    true,
	}, func(m *events.Stored) error {
		e, err := m.Event()
		if err != nil {
			return nil // not an event of ours
		}
		mu.Lock()
		defer mu.Unlock()
		s := studies[e.Subject]
		if s == nil {
			return nil
		}
		var d struct {
			Generation int `json:"generation"`
		}
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return fmt.Errorf("%s of %s: %w", e.Type, e.Subject, err)
		}
		switch {
		case strings.HasPrefix(m.Subject, events.SubjectAITriage+"."):
			s.triageCount++
			if d.Generation >= s.triaged {
				s.triaged, s.triageTime = d.Generation, m.Time
			}
		default:
			if s.received.IsZero() {
				s.received = m.Time
			}
			lastEvent = time.Now()
			s.generation = max(s.generation, d.Generation)
			if o.resume != "" && resumed.IsZero() && allReceived() {
				// Not ResumeConsumer: nats-server (2.15) then hands out
				// nothing until a new message or pull request comes,
				// seconds later; a pause that ends wakes the consumer
				// when its timer fires.
				resumed = time.Now().Add(300 * time.Millisecond)
				if _, err := js.PauseConsumer(sctx, o.stream, o.resume, resumed); err != nil {
					return fmt.Errorf("resume consumer %s of %s: %w", o.resume, o.stream, err)
				}
			}
		}
		if done() {
			return errAllTriaged
		}
		return nil
	})
	if !errors.Is(err, errAllTriaged) {
		if o.resume != "" && resumed.IsZero() {
			// Leave the cluster working: end the pause.
			if _, perr := js.PauseConsumer(context.WithoutCancel(ctx), o.stream, o.resume, time.Now()); perr != nil {
				fmt.Fprintf(os.Stderr, "cluster triage: ending the pause of %s: %v\n", o.resume, perr)
			}
		}
		var se *stuckError
		if cause := context.Cause(sctx); errors.As(cause, &se) {
			fmt.Printf("STUCK: %d of %d studies have no study event %v after the last one came (ingest's study assembler did not report them): %s\n",
				len(se.stuck), se.of, se.after, strings.Join(se.stuck, " "))
			return se
		}
		missing := 0
		mu.Lock()
		for _, s := range studies {
			if s.generation == 0 || s.triaged < s.generation {
				missing++
			}
		}
		mu.Unlock()
		if err == nil || errors.Is(context.Cause(sctx), errTimeout) {
			return fmt.Errorf("%d of %d studies without a triage after %v", missing, len(studies), o.timeout)
		}
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	var firstRecv, lastRecv, firstTriage, lastTriage time.Time
	triages, firstImages := 0, 0
	for _, s := range studies {
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
	}
	e2e := lastTriage.Sub(since).Seconds()
	window := lastTriage.Sub(firstRecv).Seconds()
	n := float64(len(studies))
	fmt.Printf("RESULT test=understand label=%s studies=%d images=%d triages=%d send_to_triage_s=%.2f received_to_triage_s=%.2f "+
		"studies_per_s=%.2f images_per_s=%.1f window_studies_per_s=%.2f window_images_per_s=%.1f first_received_s=%.2f last_received_s=%.2f\n",
		o.label, len(studies), images, triages, e2e, window, n/e2e, float64(images)/e2e, n/window, float64(images)/window,
		firstRecv.Sub(since).Seconds(), lastRecv.Sub(since).Seconds())
	if !resumed.IsZero() {
		b := lastTriage.Sub(firstTriage).Seconds()
		if b <= 0 {
			return errors.New("the backlog's triages all have one time: too few studies for a rate")
		}
		fmt.Printf("RESULT test=backlog label=%s studies=%d images=%d resume_to_first_triage_s=%.2f first_to_last_triage_s=%.2f backlog_studies_per_s=%.2f backlog_images_per_s=%.1f\n",
			o.label, len(studies), images, firstTriage.Sub(resumed).Seconds(), b, (n-1)/b, float64(images-firstImages)/b)
	}
	return nil
}
