// Command load is the ingest load test: for each number of associations
// in --associations, it keeps that many DICOM associations storing new
// instances for --duration, spread over the ingest addresses of --addr,
// then checks that every instance answered Success has its
// pacs.instance.stored event in the stream, and samples the lag of the
// stream's consumers meanwhile. It prints one RESULT line per run:
//
//	RESULT associations=N instances=… per_s=… mb_per_s=… p50_ms=… p95_ms=… p99_ms=… max_ms=…
//	       errors=… refused=… lost=… max_pending=…
//
// where lost counts the instances answered Success whose event is missing
// (must be 0) and max_pending the largest number of events a consumer had
// not yet been delivered.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/bench/internal/benchkit"
	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

type options struct {
	addrs        []string
	natsURL      string
	associations []int
	duration     time.Duration
	pixelBytes   int
	perStudy     int
	label        string
	verbose      bool
}

func parseOptions(args []string) (*options, error) {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:11112", "ingest DICOM addresses, comma-separated: associations go to them in turn")
	natsURL := fs.String("nats-url", nats.DefaultURL, "NATS server(s) of the pipeline, comma-separated")
	assocs := fs.String("associations", "1,4,16", "runs: concurrent associations of each")
	duration := fs.Duration("duration", 20*time.Second, "how long each run stores")
	pixelBytes := fs.Int("pixel-bytes", 64<<10, "pixel data bytes of each instance")
	perStudy := fs.Int("per-study", 50, "instances of each study (an association starts a new study after so many)")
	label := fs.String("label", "", "a label for the RESULT lines, e.g. the setup measured")
	verbose := fs.Bool("verbose", false, "print each run's progress every second")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	n, err := benchkit.Ints("associations", *assocs)
	if err != nil {
		return nil, err
	}
	if *duration <= 0 || *pixelBytes < 2 || *perStudy < 1 {
		return nil, errors.New("--duration, --pixel-bytes and --per-study must be positive")
	}
	return &options{addrs: strings.Split(*addr, ","), natsURL: *natsURL, associations: n, duration: *duration,
		pixelBytes: *pixelBytes, perStudy: *perStudy, label: *label, verbose: *verbose}, nil
}

func main() { benchkit.Main("load", parseOptions, run) }

func run(ctx context.Context, o *options) error {
	nc, err := nats.Connect(o.natsURL, nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	benchkit.PrintMachine()
	for _, n := range o.associations {
		if err := loadRun(ctx, o, js, n); err != nil {
			return fmt.Errorf("%d associations: %w", n, err)
		}
	}
	benchkit.PrintEnd()
	return nil
}

// stored is what one association got done.
type stored struct {
	latencies []float64 // ms, Success only
	sops      []string  // answered Success
	errors    int       // association or network failures
	refused   int       // a status other than Success
	bytes     int64
}

func loadRun(ctx context.Context, o *options, js jetstream.JetStream, n int) error {
	stream, err := js.Stream(ctx, events.StreamConfig{}.StreamName())
	if err != nil {
		return fmt.Errorf("the events stream (is the pipeline running?): %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	firstSeq := info.State.LastSeq + 1

	lagCtx, stopLag := context.WithCancel(ctx)
	maxPending := make(chan uint64, 1)
	go func() { maxPending <- sampleLag(lagCtx, stream) }()

	results := make([]stored, n)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(o.duration)
	for i := range n {
		wg.Go(func() { results[i] = associate(ctx, o, o.addrs[i%len(o.addrs)], deadline) })
	}
	if o.verbose {
		go func() {
			for time.Now().Before(deadline) {
				time.Sleep(time.Second)
				benchkit.Progress("%d associations: %.0f s", n, time.Since(start).Seconds())
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	var all stored
	for _, r := range results {
		all.latencies = append(all.latencies, r.latencies...)
		all.sops = append(all.sops, r.sops...)
		all.errors += r.errors
		all.refused += r.refused
		all.bytes += r.bytes
	}
	lost, err := missingEvents(ctx, js, firstSeq, all.sops)
	stopLag()
	pending := <-maxPending
	if err != nil {
		return err
	}
	fmt.Printf("RESULT label=%s associations=%d seconds=%.1f instances=%d per_s=%.1f mb_per_s=%.1f p50_ms=%.1f p95_ms=%.1f p99_ms=%.1f max_ms=%.1f errors=%d refused=%d lost=%d max_pending=%d\n",
		orDash(o.label), n, elapsed.Seconds(), len(all.sops), float64(len(all.sops))/elapsed.Seconds(), float64(all.bytes)/elapsed.Seconds()/1e6,
		benchkit.Pct(all.latencies, 50), benchkit.Pct(all.latencies, 95), benchkit.Pct(all.latencies, 99), benchkit.Pct(all.latencies, 100),
		all.errors, all.refused, lost, pending)
	if lost > 0 {
		return fmt.Errorf("%d instances answered Success have no pacs.instance.stored event", lost)
	}
	return nil
}

// associate stores new instances over one association after another until
// the deadline: an association ends after --per-study instances (one
// study), or on an error, and the next one starts.
func associate(ctx context.Context, o *options, addr string, deadline time.Time) stored {
	var r stored
	cfg := dimse.ClientConfig{CallingAE: "LOADTEST", CalledAE: "PACSFLOW"}
	props := []dimse.Proposal{{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}}
	for time.Now().Before(deadline) && ctx.Err() == nil {
		actx, cancel := context.WithTimeout(ctx, time.Minute)
		c, err := dimse.Dial(actx, addr, cfg, props)
		if err != nil {
			cancel()
			r.errors++
			time.Sleep(100 * time.Millisecond) // the receiver may be restarting
			continue
		}
		for _, in := range dicomtest.Study(1, o.perStudy, o.pixelBytes) {
			if !time.Now().Before(deadline) {
				break
			}
			ds := in.DataSet()
			t0 := time.Now()
			res, err := c.Store(actx, dimse.StoreRequest{AffectedSOPClassUID: in.SOPClassUID, AffectedSOPInstanceUID: in.SOPInstanceUID},
				uid.ExplicitVRLittleEndian, bytes.NewReader(ds))
			switch {
			case err != nil:
				r.errors++
			case res.Status != dimse.StatusSuccess:
				r.refused++
			default:
				r.latencies = append(r.latencies, benchkit.Ms(time.Since(t0)))
				r.sops = append(r.sops, in.SOPInstanceUID)
				r.bytes += int64(len(ds))
			}
			if err != nil {
				break
			}
		}
		if err := c.Release(); err != nil {
			_ = c.Abort()
		}
		cancel()
	}
	return r
}

// sampleLag returns the largest number of events any durable consumer of
// the stream (the pipeline's: study assembler, understand, notify,
// analytics) had not been delivered, sampled every second until ctx ends.
// Ephemeral consumers, such as a nats CLI reading the stream, are not the
// pipeline's lag.
func sampleLag(ctx context.Context, stream jetstream.Stream) uint64 {
	var most uint64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		lister := stream.ListConsumers(ctx)
		for ci := range lister.Info() {
			if ci.Config.Durable != "" {
				most = max(most, ci.NumPending)
			}
		}
		select {
		case <-ctx.Done():
			return most
		case <-tick.C:
		}
	}
}

// missingEvents counts the SOP Instance UIDs without a pacs.instance.stored
// event in the stream from firstSeq on.
func missingEvents(ctx context.Context, js jetstream.JetStream, firstSeq uint64, sops []string) (int, error) {
	want := make(map[string]bool, len(sops))
	for _, s := range sops {
		want[s] = true
	}
	cons, err := js.OrderedConsumer(ctx, events.StreamConfig{}.StreamName(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectInstanceStored + ".>"}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: firstSeq,
	})
	if err != nil {
		return 0, fmt.Errorf("read the instance events: %w", err)
	}
	// Events are published before Success is answered: they are all in the
	// stream by now, and reading up to its current end finds them. One
	// iterator reads them all: an ordered consumer fetched again and again
	// is recreated between fetches, which a cluster answers with "no
	// responders" while the new consumer's leader is not yet known.
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	it, err := cons.Messages()
	if err != nil {
		return 0, fmt.Errorf("read the instance events: %w", err)
	}
	defer it.Stop()
	for remaining := info.NumPending; remaining > 0 && len(want) > 0; remaining-- {
		m, err := it.Next(jetstream.NextMaxWait(10 * time.Second))
		if err != nil {
			return 0, fmt.Errorf("read the instance events (%d left): %w", remaining, err)
		}
		var d struct {
			SOPInstanceUID string `json:"sop_instance_uid"`
		}
		if json.Unmarshal(m.Data(), &d) == nil {
			delete(want, d.SOPInstanceUID)
		}
	}
	return len(want), nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
