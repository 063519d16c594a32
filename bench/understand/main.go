// Command understand benchmarks the understand service (services/understand)
// in one process: the real reference model through TensorFlow, a real
// embedded NATS JetStream server in a temporary folder, and the instances in
// its JetStream object store, as `pacsflow up --storage objectstore` keeps
// them. bench/understand.sh builds and runs it.
//
// It writes synthetic studies with pkg/synth (chest phantoms, a CR series in
// MONOCHROME2 and a DX series in MONOCHROME1, 512×512 16-bit by default),
// puts every instance into the object store and builds each study's
// pacs.study.received event as ingest would (series, instances, object keys,
// generation 1). Then, by phase (--phases):
//
//	decode      decode+preprocess rate of the backlog's images (pkg/imaging):
//	            on one goroutine, on --decoders goroutines, and fetched from
//	            the object store on --decoders goroutines, as the service does
//	model       model.Understand alone on those preprocessed images, at the
//	            batch sizes of --model-batches: the pipeline's ceiling
//	throughput  a backlog of --backlog studies is published, then the service
//	            starts; the time until the last study's ai.triage arrives
//	            gives images/s and studies/s. Twice, each on a fresh stream,
//	            consumer and analyses bucket: batch 1 (MaxSize 1) and dynamic
//	            batching (--batch-size, --batch-wait), with the same --studies,
//	            --decoders and --workers
//	latency     --latency-studies studies published one at a time to an idle
//	            service (dynamic batching), each after the previous one's
//	            ai.triage arrived: publish → triage latency, p50/p95/max, and
//	            the stage timings of the ai.findings events
//
// Times are taken on this process's clock. A study's publish time is when
// events.Publisher.Publish returns (JetStream stored the event); its triage
// time is when this process's core NATS subscription to ai.triage.> receives
// the event (what a subscriber sees). The triage's own ce-time (the analysis
// end, before the service stores its record and publishes) is reported beside
// it.
//
// Output: human-readable lines and one line per measurement
//
//	RESULT test=... key=value ...
//
// on stdout, progress on stderr. It exits 1 when a study's results are
// missing, incomplete (an image skipped) or late beyond --timeout; missing a
// target (dynamic ≥ 3× batch 1, p95 ≤ 1 s) is reported, not a failure.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/bench/internal/benchkit"
	"github.com/pacsflow/pacsflow/pkg/batch"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
	"github.com/pacsflow/pacsflow/pkg/synth"
	"github.com/pacsflow/pacsflow/services/understand"
)

// Targets the figures are compared against.
const (
	targetRatio     = 3.0
	targetP95Millis = 1000.0
)

type options struct {
	benchkit.Common
	size                       int
	backlog, backlogImages     int
	latencyStudies, latImages  int
	studies, decoders, workers int
	batchSize                  int
	batchWait                  time.Duration
	modelBatches               []int
	modelTime, decodeTime      time.Duration
	phases                     map[string]bool
	verbose                    bool
}

var allPhases = []string{"decode", "model", "throughput", "latency"}

func parseOptions(args []string) (*options, error) {
	fs := flag.NewFlagSet("understand", flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, `usage: understand [flags]    (bench/understand.sh builds and runs it)

Benchmarks the understand service in one process: the reference model through TensorFlow,
an embedded NATS JetStream server in a temporary folder, the instances in its object store.
Synthetic CR and DX studies (pkg/synth, needs a Python with numpy) are published as
pacs.study.received events. Phases (--phases):
  decode      decode+preprocess images/s of the backlog's images (pkg/imaging)
  model       model.Understand alone on preprocessed images, per batch size
  throughput  a backlog of studies, then the service starts: images/s and studies/s until
              the last ai.triage, with batch 1 and with dynamic batching (target ≥ 3×)
  latency     one study at a time into an idle service: publish → ai.triage received,
              p50/p95/max (target p95 ≤ 1 s), and the ai.findings stage timings
Prints RESULT lines (key=value) on stdout, progress on stderr. Built without
-tags tensorflow, the model does not load and it says so.

flags:
`)
		fs.PrintDefaults()
	}
	o := &options{}
	o.Common.Register(fs)
	fs.IntVar(&o.size, "size", synth.DefaultSize, "rows and columns of the CR and DX images (16-bit)")
	fs.IntVar(&o.backlog, "backlog", 40, "studies in the throughput backlog")
	fs.IntVar(&o.backlogImages, "images-per-series", 4, "images in each of the CR and DX series of a backlog study (a study has twice as many)")
	fs.IntVar(&o.latencyStudies, "latency-studies", 20, "studies published one at a time in the latency phase")
	fs.IntVar(&o.latImages, "latency-images-per-series", 25, "images in each of the CR and DX series of a latency study")
	fs.IntVar(&o.studies, "studies", 4, "understand.Config.Studies: studies analyzed at once (both throughput runs and latency)")
	fs.IntVar(&o.decoders, "decoders", 0, "understand.Config.Decoders: images fetched and decoded at once (0: one per CPU)")
	fs.IntVar(&o.workers, "workers", 1, "batch.Config.Workers: model batches run at once, in every run")
	fs.IntVar(&o.batchSize, "batch-size", 32, "largest batch of the dynamic-batching runs")
	fs.DurationVar(&o.batchWait, "batch-wait", 5*time.Millisecond, "batch wait of the dynamic-batching runs")
	batches := fs.String("model-batches", "1,8,32", "batch sizes of the model phase, comma-separated")
	fs.DurationVar(&o.modelTime, "model-seconds", 3*time.Second, "how long the model phase runs each batch size")
	fs.DurationVar(&o.decodeTime, "decode-seconds", time.Second, "how long the decode phase runs each of its three measurements")
	phases := fs.String("phases", strings.Join(allPhases, ","), "phases to run, comma-separated: "+strings.Join(allPhases, ", "))
	fs.BoolVar(&o.verbose, "v", false, "log the service's info lines and each latency study")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.modelBatches, err = benchkit.Ints("model-batches", *batches); err != nil {
		return nil, err
	}
	ps, err := benchkit.Choices("phases", "phase", *phases, allPhases)
	if err != nil {
		return nil, err
	}
	o.phases = map[string]bool{}
	for _, p := range ps {
		o.phases[p] = true
	}
	switch {
	case o.backlog < 1 || o.backlogImages < 1 || o.latencyStudies < 1 || o.latImages < 1:
		return nil, errors.New("--backlog, --images-per-series, --latency-studies and --latency-images-per-series must be at least 1")
	case o.studies < 1 || o.decoders < 0 || o.workers < 1 || o.batchSize < 1:
		return nil, errors.New("--studies, --workers and --batch-size must be at least 1, --decoders at least 0")
	}
	if o.decoders == 0 {
		// The service's own default, resolved here so that it is printed.
		o.decoders = runtime.GOMAXPROCS(0)
	}
	return o, nil
}

func main() { benchkit.Main("understand", parseOptions, run) }

// bench is what the phases share.
type bench struct {
	o              *options
	*benchkit.NATS // the server, this process's connection, its object store
	model          *model.Model
	log            *slog.Logger
	backlog        []*study
	latency        []*study
	runs           int // service runs so far: each gets its own analyses bucket
	// modelRate is the model phase's images/s by batch size.
	modelRate map[int]float64
}

// study is one synthetic study in the object store, and its event's data.
type study struct {
	uid    string
	data   *events.StudyReceived
	images int
	files  []string // absolute paths of its instances
	keys   []string // their object keys
}

func run(ctx context.Context, o *options) (err error) {
	b := &bench{o: o, modelRate: map[int]float64{}}
	b.log = benchkit.Logger(o.verbose)
	work, done, err := benchkit.WorkFolder(o.Work, o.Keep, "pacsflow-bench-understand-")
	if err != nil {
		return err
	}
	defer done(&err)
	load0 := benchkit.PrintMachine()

	// The model first: without TensorFlow (a build without -tags
	// tensorflow) there is nothing to measure, and this says so at once.
	start := time.Now()
	b.model, err = model.Open(ctx, o.Model, o.ModelOptions())
	if err != nil {
		return err
	}
	defer b.model.Close()
	benchkit.PrintModel(b.model, &o.Common, start)

	needBacklog := o.phases["decode"] || o.phases["model"] || o.phases["throughput"]
	var backlogTruth, latencyTruth *synth.Result
	backlogDir, latencyDir := filepath.Join(work, "backlog"), filepath.Join(work, "latency")
	if needBacklog {
		if backlogTruth, err = writeStudies(ctx, backlogDir, synth.Config{Studies: o.backlog, ImagesPerSeries: o.backlogImages,
			Size: o.size, Finding: synth.FindingMixed, Seed: uint64(o.Seed)}, o.Python); err != nil {
			return err
		}
	}
	if o.phases["latency"] {
		// Another seed: other UIDs, so that no study of the backlog is met again.
		if latencyTruth, err = writeStudies(ctx, latencyDir, synth.Config{Studies: o.latencyStudies, ImagesPerSeries: o.latImages,
			Size: o.size, Finding: synth.FindingMixed, Seed: uint64(o.Seed) + 1000}, o.Python); err != nil {
			return err
		}
	}

	if b.NATS, err = benchkit.StartNATS(ctx, filepath.Join(work, "nats"), "pacsflow-bench-understand"); err != nil {
		return err
	}
	defer b.NATS.Close()
	if backlogTruth != nil {
		if b.backlog, err = b.putStudies(ctx, backlogDir, backlogTruth); err != nil {
			return err
		}
	}
	if latencyTruth != nil {
		if b.latency, err = b.putStudies(ctx, latencyDir, latencyTruth); err != nil {
			return err
		}
	}

	fmt.Printf("service: studies %d at once, decoders %d, batch workers %d; dynamic batching: up to %d images, wait %v\n",
		o.studies, o.decoders, o.workers, o.batchSize, o.batchWait)
	fmt.Printf("RESULT test=setup cpus=%d gomaxprocs=%d load_start=%s size=%d intra_op=%d inter_op=%d studies=%d decoders=%d workers=%d batch_size=%d batch_wait_ms=%g\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), strings.ReplaceAll(load0, " ", ","), o.size, o.IntraOp, o.InterOp,
		o.studies, o.decoders, o.workers, o.batchSize, benchkit.Ms(o.batchWait))

	var imgs []model.Image
	if o.phases["decode"] || o.phases["model"] {
		if imgs, err = b.decodePhase(ctx, o.phases["decode"]); err != nil {
			return err
		}
	}
	if o.phases["model"] {
		if err := b.modelPhase(ctx, imgs); err != nil {
			return err
		}
	}
	if o.phases["throughput"] {
		if err := b.throughputPhase(ctx); err != nil {
			return err
		}
	}
	if o.phases["latency"] {
		if err := b.latencyPhase(ctx); err != nil {
			return err
		}
	}
	benchkit.PrintEnd()
	return nil
}

// writeStudies writes synthetic studies into dir with the phantom generator.
func writeStudies(ctx context.Context, dir string, cfg synth.Config, python string) (*synth.Result, error) {
	start := time.Now()
	res, err := synth.Write(ctx, dir, cfg, synth.Python{Interpreter: python})
	if err != nil {
		return nil, fmt.Errorf("write %d synthetic studies: %w", cfg.Studies, err)
	}
	benchkit.Progress("wrote %d studies, %d instances, %.0f MB in %v", cfg.Studies, res.Instances, float64(res.Bytes)/1e6, time.Since(start).Round(time.Millisecond))
	return res, nil
}

// putStudies puts every instance of the studies synth wrote into the object
// store, as ingest does, and builds each study's event data.
func (b *bench) putStudies(ctx context.Context, dir string, res *synth.Result) ([]*study, error) {
	start := time.Now()
	var out []*study
	for _, ts := range res.Truth.Studies {
		s := &study{uid: ts.StudyInstanceUID}
		d := benchkit.NewStudyData(ts)
		for _, f := range ts.Files {
			p := filepath.Join(dir, filepath.FromSlash(f.Path))
			key, err := storage.InstanceKey(ts.StudyInstanceUID, f.SeriesInstanceUID, f.SOPInstanceUID, "v1")
			if err != nil {
				return nil, err
			}
			obj, err := benchkit.PutFile(ctx, b.Store, key, p)
			if err != nil {
				return nil, err
			}
			d.Add(f, key, obj)
			s.files, s.keys = append(s.files, p), append(s.keys, key)
		}
		var err error
		if s.data, err = d.Done(); err != nil {
			return nil, err
		}
		s.images = s.data.NumInstances
		out = append(out, s)
	}
	benchkit.Progress("put %d instances into the object store in %v", res.Instances, time.Since(start).Round(time.Millisecond))
	return out, nil
}

// event is a new pacs.study.received event of the study; its time is set
// when it is published.
func (s *study) event() *events.Event { return benchkit.StudyEvent(s.data) }

func images(set []*study) int {
	n := 0
	for _, s := range set {
		n += s.images
	}
	return n
}

// decodePhase measures decoding and preprocessing the backlog's images,
// and returns them preprocessed, for the model phase.
func (b *bench) decodePhase(ctx context.Context, measure bool) ([]model.Image, error) {
	p := b.model.Contract().Preprocessing
	var files, keys []string
	for _, s := range b.backlog {
		files, keys = append(files, s.files...), append(keys, s.keys...)
	}
	data := make([][]byte, len(files))
	imgs := make([]model.Image, len(files))
	for i, f := range files {
		var err error
		if data[i], err = os.ReadFile(f); err != nil {
			return nil, fmt.Errorf("read instance: %w", err)
		}
		fr, err := imaging.Decode(data[i])
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", f, err)
		}
		imgs[i] = p.Input(fr)
	}
	if !measure {
		return imgs, nil
	}
	decode := func(i int) error {
		f, err := imaging.Decode(data[i%len(data)])
		if err != nil {
			return err
		}
		p.Input(f)
		return nil
	}
	fetchDecode := func(i int) error {
		// What the service does per image: read the object, then decode.
		rc, _, err := b.Store.Open(ctx, keys[i%len(keys)])
		if err != nil {
			return err
		}
		buf, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		f, err := imaging.Decode(buf)
		if err != nil {
			return err
		}
		p.Input(f)
		return nil
	}
	fmt.Printf("\n== decode+preprocess: %d images of %d×%d, 16-bit, CR and DX (%.0f KB each) → %d×%d\n",
		len(data), b.o.size, b.o.size, float64(len(data[0]))/1e3, p.ImageSize[0], p.ImageSize[1])
	for _, m := range []struct {
		name       string
		goroutines int
		work       func(int) error
		what       string
	}{
		{"decode", 1, decode, "in memory, 1 goroutine (per core)"},
		{"decode", b.o.decoders, decode, fmt.Sprintf("in memory, %d goroutines", b.o.decoders)},
		{"fetch_decode", b.o.decoders, fetchDecode, fmt.Sprintf("fetched from the object store, %d goroutines (the service's feed)", b.o.decoders)},
	} {
		rate, err := rateOf(ctx, m.goroutines, b.o.decodeTime, m.work)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.name, err)
		}
		fmt.Printf("%-70s %8.1f images/s\n", m.what, rate)
		fmt.Printf("RESULT test=%s goroutines=%d images_per_s=%.1f\n", m.name, m.goroutines, rate)
	}
	return imgs, nil
}

// rateOf runs work(0), work(1), … on n goroutines for about d and returns
// the calls per second.
func rateOf(ctx context.Context, n int, d time.Duration, work func(int) error) (float64, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := time.Now()
	for g := range n {
		wg.Go(func() {
			for time.Since(start) < d && ctx.Err() == nil {
				if err := work(int(next.Add(1) - 1)); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return 0, err
	}
	return float64(next.Load()) / el.Seconds(), nil
}

// modelPhase measures model.Understand alone.
func (b *bench) modelPhase(ctx context.Context, imgs []model.Image) error {
	fmt.Printf("\n== model alone: %s on preprocessed images, %v per batch size\n", model.SigUnderstand, b.o.modelTime)
	for _, n := range b.o.modelBatches {
		in := make([]model.Image, n)
		for i := range in {
			in[i] = imgs[i%len(imgs)]
		}
		// A first run of a new batch shape allocates its buffers: not counted.
		if _, err := b.model.Understand(ctx, in); err != nil {
			return fmt.Errorf("model at batch %d: %w", n, err)
		}
		calls := 0
		start := time.Now()
		for calls < 3 || time.Since(start) < b.o.modelTime {
			if _, err := b.model.Understand(ctx, in); err != nil {
				return fmt.Errorf("model at batch %d: %w", n, err)
			}
			calls++
		}
		el := time.Since(start)
		rate := float64(calls*n) / el.Seconds()
		b.modelRate[n] = rate
		fmt.Printf("batch %-3d %8.1f images/s  %7.1f ms per batch\n", n, rate, benchkit.Ms(el)/float64(calls))
		fmt.Printf("RESULT test=model batch=%d images_per_s=%.1f ms_per_batch=%.1f intra_op=%d inter_op=%d\n",
			n, rate, benchkit.Ms(el)/float64(calls), b.o.IntraOp, b.o.InterOp)
	}
	return nil
}

// service is one run of the understand service on a fresh stream.
type service struct {
	reg    *prometheus.Registry
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
	err    error
	once   sync.Once
}

// freshService deletes and provisions the events stream (so no event,
// consumer or duplicate-detection state of an earlier run remains) and
// creates a service with its own connection, registry and analyses bucket.
// The caller starts it.
func (b *bench) freshService(ctx context.Context, cfg batch.Config) (*service, *understand.Service, error) {
	if err := benchkit.FreshStream(ctx, b.JS); err != nil {
		return nil, nil, err
	}
	s := &service{reg: prometheus.NewRegistry()}
	var err error
	// Its own connection, as a separate process would have.
	if s.nc, err = b.Server.Connect(nats.Name("pacsflow-bench-understand-service")); err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		s.nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	objects, err := objstore.New(ctx, js, objstore.Config{})
	if err != nil {
		s.nc.Close()
		return nil, nil, err
	}
	b.runs++
	svc, err := understand.New(ctx, js, understand.Config{
		Model: b.model, Objects: objects, Batch: cfg, Studies: b.o.studies, Decoders: b.o.decoders,
		Bucket: fmt.Sprintf("bench-understand-%d", b.runs), Logger: b.log, Registerer: s.reg,
	})
	if err != nil {
		s.nc.Close()
		return nil, nil, err
	}
	return s, svc, nil
}

func (s *service) start(ctx context.Context, svc *understand.Service) {
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan error, 1)
	go func() { s.done <- svc.Run(ctx) }()
}

// stop stops the service, waits for it, and closes its connection. It may
// be called again (a deferred call on an error path): it stops it once.
func (s *service) stop() error {
	s.once.Do(func() {
		defer s.nc.Close()
		if s.cancel == nil {
			return
		}
		s.cancel()
		if err := <-s.done; err != nil {
			s.err = fmt.Errorf("understand service: %w", err)
		}
	})
	return s.err
}

// settled waits until the service counts n studies analyzed (benchkit.Settled).
func (s *service) settled(ctx context.Context, n int) error {
	return benchkit.Settled(ctx, s.reg, benchkit.Counter{Name: "pacsflow_understand_studies_total", Label: "outcome", Value: "analyzed"}, n, "studies analyzed")
}

func batchesOf(reg *prometheus.Registry) (benchkit.Batches, error) {
	return benchkit.BatchesOf(reg, "pacsflow_understand", true)
}

// result is a study's results as this process received them.
type result struct {
	triageAt, findingsAt time.Time
	triageTime           time.Time // the triage's ce-time: the end of the analysis
	findings             *events.AIFindings
	level                string
}

// collect receives the ai.triage and ai.findings events.
func (b *bench) collect(n int) (*benchkit.Collector, error) {
	return benchkit.Collect(b.Conn, 4*n+64, events.SubjectAITriage+".>", events.SubjectAIFindings+".>")
}

// awaitResults collects results from c until every study of want has its triage and
// findings, and checks that each analyzed all its images.
func awaitResults(ctx context.Context, c *benchkit.Collector, got map[string]*result, want []*study, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	complete := func() bool {
		for _, s := range want {
			if r := got[s.uid]; r == nil || r.findings == nil || r.triageAt.IsZero() {
				return false
			}
		}
		return true
	}
	for !complete() {
		select {
		case a := <-c.C:
			if err := record(a, got); err != nil {
				return err
			}
		case <-deadline.C:
			missing := 0
			for _, s := range want {
				if r := got[s.uid]; r == nil || r.findings == nil || r.triageAt.IsZero() {
					missing++
				}
			}
			return fmt.Errorf("%d of %d studies without results after %v", missing, len(want), timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if n := c.Lost(); n > 0 {
		return fmt.Errorf("%d result events not recorded (the collector's buffer was full)", n)
	}
	for _, s := range want {
		f := got[s.uid].findings
		if f.NumImages != s.images || len(f.Skipped) > 0 {
			reason := ""
			if len(f.Skipped) > 0 {
				reason = ": " + f.Skipped[0].Reason
			}
			return fmt.Errorf("study %s: the model analyzed %d of %d images, %d skipped%s", s.uid, f.NumImages, s.images, len(f.Skipped), reason)
		}
	}
	return nil
}

func record(a benchkit.Arrival, got map[string]*result) error {
	if a.Err != nil {
		return fmt.Errorf("result event on %s: %w", a.Subject, a.Err)
	}
	r := got[a.Rcv.Subject]
	if r == nil {
		r = &result{}
		got[a.Rcv.Subject] = r
	}
	switch a.Rcv.Type {
	case events.TypeAITriage:
		r.triageAt, r.triageTime = a.At, a.Rcv.Time
		r.level = strings.Split(strings.TrimPrefix(a.Subject, events.SubjectAITriage+"."), ".")[0]
	case events.TypeAIFindings:
		var f events.AIFindings
		if err := json.Unmarshal(a.Rcv.Data, &f); err != nil {
			return fmt.Errorf("ai.findings of %s: %w", a.Rcv.Subject, err)
		}
		r.findings, r.findingsAt = &f, a.At
	}
	return nil
}

// throughputRun is one throughput measurement.
type throughputRun struct {
	name             string
	cfg              batch.Config
	seconds          float64
	imagesPerS       float64
	studiesPerS      float64
	batches          benchkit.Batches
	levels           map[string]int
	firstTriageAfter float64
}

func (b *bench) throughputPhase(ctx context.Context) error {
	n := images(b.backlog)
	fmt.Printf("\n== throughput: a backlog of %d studies × %d images (%d images), then the service starts; until the last ai.triage\n",
		len(b.backlog), b.backlog[0].images, n)
	// A study's images are all in flight until its last one is analyzed,
	// and only then does the next study start: this bounds the batches.
	fmt.Printf("at most %d studies × %d images = %d images in flight\n", b.o.studies, b.backlog[0].images, b.o.studies*b.backlog[0].images)
	var runs []*throughputRun
	for _, r := range []*throughputRun{
		{name: "batch1", cfg: batch.Config{MaxSize: 1, Workers: b.o.workers}},
		{name: "dynamic", cfg: batch.Config{MaxSize: b.o.batchSize, MaxWait: b.o.batchWait, Workers: b.o.workers}},
	} {
		if err := b.throughput(ctx, r); err != nil {
			return fmt.Errorf("throughput, %s: %w", r.name, err)
		}
		runs = append(runs, r)
		fmt.Printf("%-8s %6.2f s  %7.1f images/s  %5.2f studies/s  batches %d, mean size %.1f (%s), model busy %.0f%% of the time, %.0f ms per batch, first triage after %.2f s\n",
			r.name, r.seconds, r.imagesPerS, r.studiesPerS, r.batches.Count, r.batches.MeanSize, r.batches.Sizes,
			100*r.batches.BusyS/r.seconds, r.batches.MeanMs, r.firstTriageAfter)
		fmt.Printf("RESULT test=throughput mode=%s studies=%d images=%d seconds=%.3f images_per_s=%.1f studies_per_s=%.2f batches=%d mean_batch=%.2f batch_sizes=%s mean_batch_ms=%.1f mean_batch_wait_ms=%.1f model_busy=%.2f max_size=%d max_wait_ms=%g workers=%d concurrent_studies=%d decoders=%d intra_op=%d inter_op=%d\n",
			r.name, len(b.backlog), n, r.seconds, r.imagesPerS, r.studiesPerS, r.batches.Count, r.batches.MeanSize, r.batches.Sizes,
			r.batches.MeanMs, r.batches.MeanWaitMs, r.batches.BusyS/r.seconds, r.cfg.MaxSize, benchkit.Ms(r.cfg.MaxWait), r.cfg.Workers,
			b.o.studies, b.o.decoders, b.o.IntraOp, b.o.InterOp)
	}
	ratio := runs[1].imagesPerS / runs[0].imagesPerS
	verdict := "meets"
	if ratio < targetRatio {
		verdict = "BELOW"
	}
	fmt.Printf("dynamic / batch 1 = %.2f× (target ≥ %g×: %s)\n", ratio, targetRatio, verdict)
	// What batching can give at most is what the model alone gains from
	// it: with the model busy all the time, the pipeline runs at the
	// model's rate for the batches it gets.
	modelRatio, ofModel := math.NaN(), math.NaN()
	m1, m := b.modelRate[1], b.modelRate[b.o.batchSize]
	if m1 > 0 && m > 0 {
		modelRatio, ofModel = m/m1, runs[1].imagesPerS/m
		fmt.Printf("model alone: batch %d / batch 1 = %.2f×, the most batching can give here; dynamic batching ran at %.0f%% of the model alone at batch %d\n",
			b.o.batchSize, modelRatio, 100*ofModel, b.o.batchSize)
	}
	fmt.Printf("RESULT test=throughput_ratio ratio=%.2f target=%g met=%t model_ratio=%.2f dynamic_of_model=%.2f\n",
		ratio, targetRatio, ratio >= targetRatio, modelRatio, ofModel)
	return nil
}

func (b *bench) throughput(ctx context.Context, r *throughputRun) error {
	benchkit.Progress("throughput %s: publishing %d studies", r.name, len(b.backlog))
	s, svc, err := b.freshService(ctx, r.cfg)
	if err != nil {
		return err
	}
	defer func() { _ = s.stop() }() // an error path; the normal one stops it below
	col, err := b.collect(len(b.backlog))
	if err != nil {
		return err
	}
	defer col.Close()
	pub := events.NewPublisher(b.JS, "pacsflow/bench")
	for _, st := range b.backlog {
		if _, err := pub.Publish(ctx, st.event()); err != nil {
			return err
		}
	}
	benchkit.Progress("throughput %s: service started", r.name)
	start := time.Now()
	s.start(ctx, svc)
	got := map[string]*result{}
	if err := awaitResults(ctx, col, got, b.backlog, b.o.Timeout); err != nil {
		return err
	}
	var first, last time.Time
	r.levels = map[string]int{}
	for _, st := range b.backlog {
		res := got[st.uid]
		if last.IsZero() || res.triageAt.After(last) {
			last = res.triageAt
		}
		if first.IsZero() || res.triageAt.Before(first) {
			first = res.triageAt
		}
		r.levels[res.level]++
	}
	r.seconds = last.Sub(start).Seconds()
	r.firstTriageAfter = first.Sub(start).Seconds()
	r.imagesPerS = float64(images(b.backlog)) / r.seconds
	r.studiesPerS = float64(len(b.backlog)) / r.seconds
	if err := s.settled(ctx, len(b.backlog)); err != nil {
		return err
	}
	if err := s.stop(); err != nil {
		return err
	}
	if r.batches, err = batchesOf(s.reg); err != nil {
		return err
	}
	// The subscription saw every triage; the stream must hold them too.
	if err := b.checkStored(ctx, len(b.backlog)); err != nil {
		return err
	}
	benchkit.Progress("throughput %s: %d studies in %.2f s, triage levels %v", r.name, len(b.backlog), r.seconds, r.levels)
	return nil
}

// checkStored checks that the events stream holds n ai.triage events.
func (b *bench) checkStored(ctx context.Context, n int) error {
	stored, err := benchkit.StoredEvents(ctx, b.JS, events.SubjectAITriage+".>")
	if err != nil {
		return err
	}
	if stored != uint64(n) {
		return fmt.Errorf("the stream holds %d ai.triage events, want %d", stored, n)
	}
	return nil
}

func (b *bench) latencyPhase(ctx context.Context) error {
	cfg := batch.Config{MaxSize: b.o.batchSize, MaxWait: b.o.batchWait, Workers: b.o.workers}
	fmt.Printf("\n== latency: %d studies × %d images, one at a time into an idle service (batches up to %d, wait %v)\n",
		len(b.latency), b.latency[0].images, cfg.MaxSize, cfg.MaxWait)
	s, svc, err := b.freshService(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { _ = s.stop() }() // an error path; the normal one stops it below
	col, err := b.collect(len(b.latency))
	if err != nil {
		return err
	}
	defer col.Close()
	s.start(ctx, svc)
	// Idle means waiting for work: the consumer exists and its pull request
	// is with the server, so no study pays for the service's start.
	if err := b.waitIdle(ctx); err != nil {
		return err
	}
	pub := events.NewPublisher(b.JS, "pacsflow/bench")
	got := map[string]*result{}
	var lat, endLat, wait, dec, inf, total []float64
	for i, st := range b.latency {
		if _, err := pub.Publish(ctx, st.event()); err != nil {
			return err
		}
		published := time.Now()
		if err := awaitResults(ctx, col, got, []*study{st}, b.o.Timeout); err != nil {
			return err
		}
		r := got[st.uid]
		l, e := benchkit.Ms(r.triageAt.Sub(published)), benchkit.Ms(r.triageTime.Sub(published))
		t := r.findings.Timings
		lat, endLat = append(lat, l), append(endLat, e)
		wait, dec, inf, total = append(wait, 1000*t.Wait), append(dec, 1000*t.Decode), append(inf, 1000*t.Inference), append(total, 1000*t.Total)
		if b.o.verbose {
			benchkit.Progress("latency %d/%d: %.0f ms to ai.triage received (analysis end %.0f ms; wait %.0f, decode %.0f, inference %.0f, total %.0f)",
				i+1, len(b.latency), l, e, 1000*t.Wait, 1000*t.Decode, 1000*t.Inference, 1000*t.Total)
		}
	}
	if err := s.settled(ctx, len(b.latency)); err != nil {
		return err
	}
	if err := s.stop(); err != nil {
		return err
	}
	bs, err := batchesOf(s.reg)
	if err != nil {
		return err
	}
	if err := b.checkStored(ctx, len(b.latency)); err != nil {
		return err
	}
	verdict := "meets"
	if benchkit.Pct(lat, 95) > targetP95Millis {
		verdict = "ABOVE"
	}
	fmt.Printf("publish → ai.triage received: p50 %.0f ms, p95 %.0f ms, max %.0f ms, min %.0f ms, mean %.0f ms (target p95 ≤ %.0f ms: %s)\n",
		benchkit.Pct(lat, 50), benchkit.Pct(lat, 95), benchkit.Pct(lat, 100), benchkit.Pct(lat, 0), mean(lat), targetP95Millis, verdict)
	fmt.Printf("publish → analysis end (triage ce-time): p50 %.0f ms, p95 %.0f ms, max %.0f ms\n", benchkit.Pct(endLat, 50), benchkit.Pct(endLat, 95), benchkit.Pct(endLat, 100))
	fmt.Printf("ai.findings timings, mean: wait %.1f ms, decode %.1f ms, inference %.1f ms, total %.1f ms (decode and inference overlap)\n",
		mean(wait), mean(dec), mean(inf), mean(total))
	fmt.Printf("batches %d, mean size %.1f (%s), %.0f ms per batch\n", bs.Count, bs.MeanSize, bs.Sizes, bs.MeanMs)
	fmt.Printf("RESULT test=latency studies=%d images=%d p50_ms=%.1f p95_ms=%.1f max_ms=%.1f min_ms=%.1f mean_ms=%.1f end_p50_ms=%.1f end_p95_ms=%.1f wait_ms=%.1f decode_ms=%.1f inference_ms=%.1f total_ms=%.1f batches=%d mean_batch=%.2f batch_sizes=%s target_p95_ms=%g met=%t\n",
		len(lat), b.latency[0].images, benchkit.Pct(lat, 50), benchkit.Pct(lat, 95), benchkit.Pct(lat, 100), benchkit.Pct(lat, 0), mean(lat), benchkit.Pct(endLat, 50), benchkit.Pct(endLat, 95),
		mean(wait), mean(dec), mean(inf), mean(total), bs.Count, bs.MeanSize, bs.Sizes, targetP95Millis, benchkit.Pct(lat, 95) <= targetP95Millis)
	return nil
}

// waitIdle waits until the service's consumer has a pull request waiting.
func (b *bench) waitIdle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, err := b.JS.Consumer(ctx, events.StreamConfig{}.StreamName(), "understand")
		if err == nil {
			info, err := c.Info(ctx)
			if err == nil && info.NumWaiting > 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the service's consumer is not waiting for work: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}
