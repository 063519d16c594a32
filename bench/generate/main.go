// Command generate benchmarks the generate service (services/generate) in
// one process: the real reference model through TensorFlow, a real embedded
// NATS JetStream server in a temporary folder, and the source and generated
// instances in its JetStream object store, as `pacsflow up --storage
// objectstore` keeps them. bench/generate.sh builds and runs it.
//
// It writes a few synthetic source studies with pkg/synth (chest phantoms, a
// CR and a DX image each, 512×512 16-bit by default), puts their instances
// into the object store and builds each study's pacs.study.received event as
// ingest would. Then, by phase (--phases):
//
//	model       model.Generate alone, per task of --model-tasks (restore from
//	            the studies' preprocessed CR images, synthesize from noise) and
//	            per batch size of --model-batches: the pipeline's ceiling
//	throughput  the study events are indexed by the service, then a backlog of
//	            --backlog requests of --count images each (--task) is
//	            published and the service starts again; the time until the
//	            last request's ai.augmentation.generated arrives gives images/s.
//	            Twice, each on a fresh stream, consumers and index bucket:
//	            batch 1 (MaxSize 1) and dynamic batching (--batch-size,
//	            --batch-wait), with the same --requests and --workers
//
// Times are taken on this process's clock: a run starts when the service's
// Run is called and ends when this process's core NATS subscription to
// ai.augmentation.generated.> has received the event of every request.
//
// Output: human-readable lines and one line per measurement
//
//	RESULT test=... key=value ...
//
// on stdout, progress on stderr. It exits 1 when a request's event is
// missing, incomplete or late beyond --timeout, or an image is not in the
// object store; missing the target (dynamic ≥ 3× batch 1) is reported, not a
// failure.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/batch"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
	"github.com/pacsflow/pacsflow/pkg/synth"
	"github.com/pacsflow/pacsflow/pkg/uid"
	"github.com/pacsflow/pacsflow/services/generate"
)

// targetRatio is what dynamic batching must give over batch 1.
const targetRatio = 3.0

// calledAE is the AE title the study events name, as if sent to pacsflow.
const calledAE = "PACSFLOW"

// indexBucket is the generate service's study index
// (services/generate/index.go). It is deleted before each run, as the stream
// is, so that each run indexes its studies afresh.
const indexBucket = "pacsflow-generate-index"

type options struct {
	model, python, work string
	cpuProfile          string
	size, seed, studies int
	backlog, count      int
	task, prompt        string
	requests, workers   int
	batchSize           int
	batchWait           time.Duration
	intraOp, interOp    int
	modelBatches        []int
	modelTasks          []string
	modelTime, timeout  time.Duration
	phases              map[string]bool
	keep, verbose       bool
}

var (
	allPhases = []string{"model", "throughput"}
	allTasks  = []string{events.TaskSynthesize, events.TaskRestore, events.TaskConvert}
)

func parseOptions(args []string) (*options, error) {
	fs := flag.NewFlagSet("generate", flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, `usage: generate [flags]    (bench/generate.sh builds and runs it)

Benchmarks the generate service in one process: the reference model through TensorFlow, an
embedded NATS JetStream server in a temporary folder, the source and generated instances in
its object store. Synthetic source studies (pkg/synth, needs a Python with numpy) are
published as pacs.study.received events. Phases (--phases):
  model       model.Generate alone, per task and batch size
  throughput  a backlog of ai.augmentation.requested events, then the service starts:
              images/s until the last ai.augmentation.generated, with batch 1 and with
              dynamic batching (target ≥ 3×)
Prints RESULT lines (key=value) on stdout, progress on stderr. Built without
-tags tensorflow, the model does not load and it says so.

flags:
`)
		fs.PrintDefaults()
	}
	o := &options{}
	py := os.Getenv("PACSFLOW_PYTHON")
	if py == "" {
		py = "python3"
	}
	fs.StringVar(&o.model, "model", "model/reference", "model directory")
	fs.StringVar(&o.python, "python", py, "Python with numpy, for the phantom generator ($PACSFLOW_PYTHON when set, else python3)")
	fs.StringVar(&o.work, "work", "", "folder for the studies and the NATS store, kept (default: a new temporary folder, removed at the end unless --keep)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary work folder")
	fs.IntVar(&o.size, "size", synth.DefaultSize, "rows and columns of the source CR and DX images (16-bit)")
	fs.IntVar(&o.seed, "seed", 1, "seed of the synthetic studies")
	fs.IntVar(&o.studies, "studies", 4, "source studies; request i names study i mod --studies")
	fs.IntVar(&o.backlog, "backlog", 40, "requests in the throughput backlog")
	fs.IntVar(&o.count, "count", 4, "images a request asks for (1 to 64)")
	fs.StringVar(&o.task, "task", events.TaskRestore, "task of the backlog's requests: "+strings.Join(allTasks, ", "))
	fs.StringVar(&o.prompt, "prompt", "", "prompt of the requests (synthesize: default nodule)")
	fs.IntVar(&o.requests, "requests", 8, "generate.Config.Requests: requests worked on at once (both throughput runs)")
	fs.IntVar(&o.workers, "workers", 1, "batch.Config.Workers: model batches run at once, in both runs")
	fs.IntVar(&o.batchSize, "batch-size", 16, "largest batch of the dynamic-batching run")
	fs.DurationVar(&o.batchWait, "batch-wait", 5*time.Millisecond, "batch wait of the dynamic-batching run")
	fs.IntVar(&o.intraOp, "intra-op", 1, "TensorFlow intra-op threads (0: one per core)")
	fs.IntVar(&o.interOp, "inter-op", 1, "TensorFlow inter-op threads (0: TensorFlow chooses)")
	batches := fs.String("model-batches", "1,8,16", "batch sizes of the model phase, comma-separated")
	tasks := fs.String("model-tasks", events.TaskRestore+","+events.TaskSynthesize, "tasks of the model phase, comma-separated")
	fs.DurationVar(&o.modelTime, "model-seconds", 2*time.Second, "how long the model phase runs each task and batch size")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "longest wait for a run's results")
	phases := fs.String("phases", strings.Join(allPhases, ","), "phases to run, comma-separated: "+strings.Join(allPhases, ", "))
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the throughput phase to this file (TensorFlow's threads show as external code)")
	fs.BoolVar(&o.verbose, "v", false, "log the service's info lines (one per request)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for s := range strings.SplitSeq(*batches, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--model-batches %q: want positive integers", *batches)
		}
		o.modelBatches = append(o.modelBatches, n)
	}
	for t := range strings.SplitSeq(*tasks, ",") {
		t = strings.TrimSpace(t)
		if !slices.Contains(allTasks, t) {
			return nil, fmt.Errorf("--model-tasks: unknown task %q (have %s)", t, strings.Join(allTasks, ", "))
		}
		o.modelTasks = append(o.modelTasks, t)
	}
	o.phases = map[string]bool{}
	for p := range strings.SplitSeq(*phases, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(allPhases, p) {
			return nil, fmt.Errorf("--phases: unknown phase %q (have %s)", p, strings.Join(allPhases, ", "))
		}
		o.phases[p] = true
	}
	switch {
	case !slices.Contains(allTasks, o.task):
		return nil, fmt.Errorf("--task %q: want one of %s", o.task, strings.Join(allTasks, ", "))
	case o.count < 1 || o.count > 64:
		// The request schema's bounds: a request outside them is refused.
		return nil, errors.New("--count must be 1 to 64")
	case o.studies < 1 || o.backlog < 1 || o.requests < 1 || o.workers < 1 || o.batchSize < 1:
		return nil, errors.New("--studies, --backlog, --requests, --workers and --batch-size must be at least 1")
	}
	return o, nil
}

func main() {
	o, err := parseOptions(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "generate bench: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "generate bench: FAIL: %v\n", err)
		os.Exit(1)
	}
}

// bench is what the phases share.
type bench struct {
	o       *options
	srv     *natsserver.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *objstore.Store
	model   *model.Model
	log     *slog.Logger
	studies []*study
	// id makes this process's request IDs its own: a request ID met again
	// (a kept --work folder) would find its images stored already and
	// measure a Stat instead of a Put.
	id string
	// modelRate is the model phase's images/s by task and batch size.
	modelRate map[string]map[int]float64
}

// study is one synthetic source study in the object store.
type study struct {
	uid  string
	data *events.StudyReceived
	// source is its first CR image preprocessed, what the service feeds
	// the model for restore: the model phase's input.
	source model.Image
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

func run(ctx context.Context, o *options) (err error) {
	b := &bench{o: o, id: nuid.Next(), modelRate: map[string]map[int]float64{}}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	b.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	work := o.work
	if work == "" {
		if work, err = os.MkdirTemp("", "pacsflow-bench-generate-"); err != nil {
			return fmt.Errorf("work folder: %w", err)
		}
	}
	// Only a folder made here is removed: one named with --work may hold
	// other things.
	if o.work == "" && !o.keep {
		defer func() {
			if rerr := os.RemoveAll(work); rerr != nil && err == nil {
				err = fmt.Errorf("remove the work folder: %w", rerr)
			}
		}()
	}
	progress("work folder %s", work)
	load0 := loadAverage()
	fmt.Printf("machine: %d CPUs (GOMAXPROCS %d), load average %s at start\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), load0)

	// The model first: without TensorFlow (a build without -tags
	// tensorflow) there is nothing to measure, and this says so at once.
	start := time.Now()
	if b.model, err = model.Open(ctx, o.model, model.Options{IntraOpThreads: o.intraOp, InterOpThreads: o.interOp}); err != nil {
		return fmt.Errorf("open the model: %w", err)
	}
	defer b.model.Close()
	c := b.model.Contract()
	if !c.Has(model.SigGenerate) {
		return fmt.Errorf("model %s %s has no %s signature", c.Model.Name, c.Model.Version, model.SigGenerate)
	}
	fmt.Printf("model: %s %s from %s, loaded in %v; TensorFlow threads intra-op %d, inter-op %d (0: TensorFlow's default)\n",
		c.Model.Name, c.Model.Version, o.model, time.Since(start).Round(time.Millisecond), o.intraOp, o.interOp)

	dir := filepath.Join(work, "studies")
	// This program's own subfolder: a --work folder used again gets it
	// written afresh (synth refuses a folder that is not empty).
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("studies folder: %w", err)
	}
	start = time.Now()
	// One image per series is enough: the service takes a study's first
	// image of an accepted modality as the source.
	res, err := synth.Write(ctx, dir, synth.Config{Studies: o.studies, ImagesPerSeries: 1, Size: o.size,
		Finding: synth.FindingMixed, Seed: uint64(o.seed)}, synth.Python{Interpreter: o.python})
	if err != nil {
		return fmt.Errorf("write %d synthetic studies: %w", o.studies, err)
	}
	progress("wrote %d studies, %d instances, %.0f MB in %v", o.studies, res.Instances, float64(res.Bytes)/1e6, time.Since(start).Round(time.Millisecond))

	if b.srv, err = natsserver.Start(natsserver.Config{StoreDir: filepath.Join(work, "nats")}); err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	defer b.srv.Shutdown()
	if b.nc, err = b.srv.Connect(nats.Name("pacsflow-bench-generate")); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer b.nc.Close()
	if b.js, err = jetstream.New(b.nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if b.store, err = objstore.New(ctx, b.js, objstore.Config{}); err != nil {
		return fmt.Errorf("object store: %w", err)
	}
	if b.studies, err = b.putStudies(ctx, dir, res); err != nil {
		return err
	}

	fmt.Printf("service: %d requests at once, batch workers %d; dynamic batching: up to %d images, wait %v\n",
		o.requests, o.workers, o.batchSize, o.batchWait)
	fmt.Printf("RESULT test=setup cpus=%d gomaxprocs=%d load_start=%s size=%d intra_op=%d inter_op=%d studies=%d backlog=%d count=%d task=%s requests=%d workers=%d batch_size=%d batch_wait_ms=%g\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), strings.ReplaceAll(load0, " ", ","), o.size, o.intraOp, o.interOp,
		o.studies, o.backlog, o.count, o.task, o.requests, o.workers, o.batchSize, ms(o.batchWait))
	if o.phases["model"] {
		if err := b.modelPhase(ctx); err != nil {
			return err
		}
	}
	if o.phases["throughput"] {
		if err := b.profiled(b.throughputPhase)(ctx); err != nil {
			return err
		}
	}
	load1 := loadAverage()
	fmt.Printf("load average %s at the end\n", load1)
	fmt.Printf("RESULT test=end load_end=%s\n", strings.ReplaceAll(load1, " ", ","))
	return nil
}

// cpuTime is the CPU seconds this process has used, user and system; NaN
// where getrusage fails.
func cpuTime() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// profiled wraps phase in a CPU profile when --cpuprofile asks for one.
func (b *bench) profiled(phase func(context.Context) error) func(context.Context) error {
	if b.o.cpuProfile == "" {
		return phase
	}
	return func(ctx context.Context) (err error) {
		f, err := os.Create(b.o.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("cpu profile: %w", cerr)
			}
		}()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
		return phase(ctx)
	}
}

// loadAverage is the 1, 5 and 15 minute load averages, or "unknown".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// sopClasses are the SOP classes synth writes, by modality.
var sopClasses = map[string]string{"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}

// putStudies puts the instances synth wrote into the object store, as
// ingest does, and builds each study's event data (one series per file:
// synth wrote one image per series).
func (b *bench) putStudies(ctx context.Context, dir string, res *synth.Result) ([]*study, error) {
	pre := b.model.Contract().Preprocessing
	var out []*study
	for _, ts := range res.Truth.Studies {
		s := &study{uid: ts.StudyInstanceUID}
		d := &events.StudyReceived{
			Patient:    events.Patient{ID: ts.PatientID, Name: ts.PatientName},
			Study:      events.Study{StudyInstanceUID: ts.StudyInstanceUID, AccessionNumber: ts.AccessionNumber, Description: "SYNTHETIC CHEST PHANTOM"},
			CallingAEs: []string{"BENCH"}, CalledAEs: []string{calledAE}, Associations: []string{"bench-" + ts.AccessionNumber},
			Trigger: events.TriggerQuietPeriod, Generation: 1,
		}
		for _, f := range ts.Files {
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
			if err != nil {
				return nil, fmt.Errorf("read instance: %w", err)
			}
			if f.Modality == "CR" && s.source.Pixels == nil {
				fr, err := imaging.Decode(data)
				if err != nil {
					return nil, fmt.Errorf("decode %s: %w", f.Path, err)
				}
				s.source = imaging.Preprocess(fr, pre)
			}
			key, err := storage.InstanceKey(ts.StudyInstanceUID, f.SeriesInstanceUID, f.SOPInstanceUID, "v1")
			if err != nil {
				return nil, fmt.Errorf("key of %s: %w", f.Path, err)
			}
			obj, err := b.store.Put(ctx, key, strings.NewReader(string(data)))
			if errors.Is(err, storage.ErrExists) {
				// A --work folder used again: its NATS store holds the
				// instance from then, byte for byte (synth is deterministic).
				obj, err = b.store.Stat(ctx, key)
			}
			if err != nil {
				return nil, fmt.Errorf("put %s: %w", f.Path, err)
			}
			if d.FirstReceivedAt.IsZero() {
				d.FirstReceivedAt = obj.Modified
			}
			d.LastReceivedAt = obj.Modified
			d.Series = append(d.Series, events.SeriesManifest{SeriesInstanceUID: f.SeriesInstanceUID, SeriesNumber: len(d.Series) + 1,
				Modality: f.Modality, NumInstances: 1, Bytes: obj.Size, Instances: []events.InstanceRef{{
					SOPInstanceUID: f.SOPInstanceUID, SOPClassUID: sopClasses[f.Modality], InstanceNumber: 1,
					TransferSyntaxUID: uid.ExplicitVRLittleEndian, ReceivedAt: obj.Modified,
					Object: events.StoredObject{Backend: events.BackendObjectStore, Bucket: objstore.DefaultBucket, Key: key, Size: obj.Size, SHA256: obj.SHA256},
				}}})
			if !slices.Contains(d.Modalities, f.Modality) {
				d.Modalities = append(d.Modalities, f.Modality)
			}
			d.NumInstances++
			d.Bytes += obj.Size
		}
		if s.source.Pixels == nil {
			return nil, fmt.Errorf("study %s has no CR image", s.uid)
		}
		sort.Strings(d.Modalities)
		d.NumSeries = len(d.Series)
		s.data = d
		// The event must be one the contract accepts, or the service would
		// never index the study and every request would be dead-lettered.
		m, err := s.event().Message()
		if err != nil {
			return nil, fmt.Errorf("study event of %s: %w", s.uid, err)
		}
		if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
			return nil, fmt.Errorf("study event of %s: %w", s.uid, err)
		}
		out = append(out, s)
	}
	progress("put %d instances into the object store", res.Instances)
	return out, nil
}

// event is a new pacs.study.received event of the study; its time is set
// when it is published.
func (s *study) event() *events.Event {
	return &events.Event{
		ID: "study/" + s.uid + "/1", Type: events.TypeStudyReceived, Source: "pacsflow/bench", Subject: s.uid,
		NATSSubject: events.StudySubject(events.SubjectStudyReceived, s.data.Modalities, calledAE), Data: s.data,
	}
}

// promptFor is the prompt of a request of task: --prompt, or for synthesize
// a finding, since synthesizing is conditioned on one.
func (b *bench) promptFor(task string) string {
	if b.o.prompt == "" && task == events.TaskSynthesize {
		return "nodule"
	}
	return b.o.prompt
}

// modelPhase measures model.Generate alone.
func (b *bench) modelPhase(ctx context.Context) error {
	fmt.Printf("\n== model alone: %s, %v per task and batch size\n", model.SigGenerate, b.o.modelTime)
	seed := uint64(0)
	for _, task := range b.o.modelTasks {
		b.modelRate[task] = map[int]float64{}
		for _, n := range b.o.modelBatches {
			reqs := make([]model.GenerateRequest, n)
			// Each call gets new seeds, so new noise, as requests do.
			next := func() []model.GenerateRequest {
				for i := range reqs {
					seed++
					reqs[i] = model.GenerateRequest{Task: task, Condition: b.promptFor(task), Seed: seed}
					if task != events.TaskSynthesize {
						reqs[i].Source = &b.studies[i%len(b.studies)].source
					}
				}
				return reqs
			}
			// A first run of a new batch shape allocates its buffers: not counted.
			if _, err := b.model.Generate(ctx, next()); err != nil {
				return fmt.Errorf("model, %s at batch %d: %w", task, n, err)
			}
			calls := 0
			start := time.Now()
			for calls < 3 || time.Since(start) < b.o.modelTime {
				if _, err := b.model.Generate(ctx, next()); err != nil {
					return fmt.Errorf("model, %s at batch %d: %w", task, n, err)
				}
				calls++
			}
			el := time.Since(start)
			rate := float64(calls*n) / el.Seconds()
			b.modelRate[task][n] = rate
			fmt.Printf("%-10s batch %-3d %8.1f images/s  %7.1f ms per batch\n", task, n, rate, ms(el)/float64(calls))
			fmt.Printf("RESULT test=model task=%s batch=%d images_per_s=%.1f ms_per_batch=%.1f intra_op=%d inter_op=%d\n",
				task, n, rate, ms(el)/float64(calls), b.o.intraOp, b.o.interOp)
		}
	}
	return nil
}

// throughputRun is one throughput measurement.
type throughputRun struct {
	name                      string
	cfg                       batch.Config
	seconds, firstAfter       float64
	imagesPerS, requestsPerS  float64
	meanRequestS, maxRequestS float64 // publish of the backlog's end → each event, on this clock
	// cpuS is this process's CPU time (user and system: the service, the
	// NATS server, TensorFlow) from the start to the last event: beside the
	// model's busy time it says whether the cores were the limit.
	cpuS    float64
	batches batchStats
}

func (b *bench) throughputPhase(ctx context.Context) error {
	n := b.o.backlog * b.o.count
	fmt.Printf("\n== throughput: a backlog of %d requests × %d images (%d images, task %s) on %d source studies, then the service starts; until the last ai.augmentation.generated\n",
		b.o.backlog, b.o.count, n, b.o.task, len(b.studies))
	// A request's images are all in flight until its last one is made,
	// and only then are they written and stored: this bounds the batches.
	fmt.Printf("at most %d requests × %d images = %d images in flight\n", b.o.requests, b.o.count, b.o.requests*b.o.count)
	var runs []*throughputRun
	for _, r := range []*throughputRun{
		{name: "batch1", cfg: batch.Config{MaxSize: 1, Workers: b.o.workers}},
		{name: "dynamic", cfg: batch.Config{MaxSize: b.o.batchSize, MaxWait: b.o.batchWait, Workers: b.o.workers}},
	} {
		if err := b.throughput(ctx, r); err != nil {
			return fmt.Errorf("throughput, %s: %w", r.name, err)
		}
		runs = append(runs, r)
		fmt.Printf("%-8s %6.2f s  %7.1f images/s  %5.2f requests/s  batches %d, mean size %.1f (%s), model busy %.0f%% of the time, %.1f ms per batch, first event after %.2f s, process CPU %.2f cores (%.1f ms an image)\n",
			r.name, r.seconds, r.imagesPerS, r.requestsPerS, r.batches.count, r.batches.meanSize, r.batches.sizes,
			100*r.batches.busyS/r.seconds, r.batches.meanMs, r.firstAfter, r.cpuS/r.seconds, 1000*r.cpuS/float64(n))
		fmt.Printf("RESULT test=throughput mode=%s requests=%d count=%d images=%d task=%s seconds=%.3f images_per_s=%.1f requests_per_s=%.2f batches=%d mean_batch=%.2f batch_sizes=%s mean_batch_ms=%.1f model_busy=%.2f first_s=%.3f mean_request_s=%.3f max_request_s=%.3f cpu_cores=%.2f cpu_ms_per_image=%.2f max_size=%d max_wait_ms=%g workers=%d concurrent_requests=%d intra_op=%d inter_op=%d\n",
			r.name, b.o.backlog, b.o.count, n, b.o.task, r.seconds, r.imagesPerS, r.requestsPerS, r.batches.count, r.batches.meanSize,
			r.batches.sizes, r.batches.meanMs, r.batches.busyS/r.seconds, r.firstAfter, r.meanRequestS, r.maxRequestS, r.cpuS/r.seconds, 1000*r.cpuS/float64(n), r.cfg.MaxSize, ms(r.cfg.MaxWait), r.cfg.Workers,
			b.o.requests, b.o.intraOp, b.o.interOp)
	}
	ratio := runs[1].imagesPerS / runs[0].imagesPerS
	verdict := "meets"
	if ratio < targetRatio {
		verdict = "BELOW"
	}
	fmt.Printf("dynamic / batch 1 = %.2f× (target ≥ %g×: %s)\n", ratio, targetRatio, verdict)
	// Batching gives hardly more than the model alone gains from it: with
	// the model busy all the time, the service runs at the model's rate for
	// the batches it gets (a little more only where batches also share the
	// service's per-call costs, the batcher's hand-off and the cgo call).
	modelRatio, ofModel := math.NaN(), math.NaN()
	if rates := b.modelRate[b.o.task]; rates[1] > 0 && rates[b.o.batchSize] > 0 {
		modelRatio, ofModel = rates[b.o.batchSize]/rates[1], runs[1].imagesPerS/rates[b.o.batchSize]
		fmt.Printf("model alone (%s): batch %d / batch 1 = %.2f×, about the most batching can give here; dynamic batching ran at %.0f%% of the model alone at batch %d\n",
			b.o.task, b.o.batchSize, modelRatio, 100*ofModel, b.o.batchSize)
	}
	fmt.Printf("RESULT test=throughput_ratio ratio=%.2f target=%g met=%t model_ratio=%.2f dynamic_of_model=%.2f\n",
		ratio, targetRatio, ratio >= targetRatio, modelRatio, ofModel)
	return nil
}

// throughput runs the service on a fresh stream: first alone with the study
// events, until it has indexed them (in production the studies arrive long
// before anyone asks for images of them), then, after the backlog of
// requests is published, again from the start, timed.
func (b *bench) throughput(ctx context.Context, r *throughputRun) error {
	if err := b.fresh(ctx); err != nil {
		return err
	}
	// Its own connection, as a separate process would have.
	nc, err := b.srv.Connect(nats.Name("pacsflow-bench-generate-service"))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	objects, err := objstore.New(ctx, js, objstore.Config{})
	if err != nil {
		return fmt.Errorf("object store: %w", err)
	}
	pub := events.NewPublisher(b.js, "pacsflow/bench")
	for _, st := range b.studies {
		if _, err := pub.Publish(ctx, st.event()); err != nil {
			return err
		}
	}
	indexer, err := b.startService(ctx, js, objects, r.cfg)
	if err != nil {
		return err
	}
	if err := b.indexed(ctx); err != nil {
		_ = indexer.stop()
		return err
	}
	if err := indexer.stop(); err != nil {
		return err
	}

	progress("throughput %s: publishing %d requests", r.name, b.o.backlog)
	col, err := b.collect(b.o.backlog)
	if err != nil {
		return err
	}
	defer col.close()
	want := map[string]bool{}
	for i := range b.o.backlog {
		req := &events.AugmentationRequested{
			RequestID:        generate.RequestID("bench", b.id, r.name, strconv.Itoa(i)),
			StudyInstanceUID: b.studies[i%len(b.studies)].uid, Task: b.o.task, Prompt: b.promptFor(b.o.task),
			Count: b.o.count, Seed: int64(i * b.o.count), RequestedBy: "cli",
		}
		if _, err := pub.Publish(ctx, generate.RequestEvent(req)); err != nil {
			return err
		}
		want[req.RequestID] = true
	}
	published := time.Now()
	progress("throughput %s: service started", r.name)
	start, cpu0 := time.Now(), cpuTime()
	s, err := b.startService(ctx, js, objects, r.cfg)
	if err != nil {
		return err
	}
	defer func() { _ = s.stop() }() // an error path; the normal one stops it below
	got, err := col.wait(ctx, want, b.o.count, b.o.timeout)
	if err != nil {
		return err
	}
	r.cpuS = cpuTime() - cpu0
	var first, last time.Time
	var sum, most float64
	for _, a := range got {
		if last.IsZero() || a.at.After(last) {
			last = a.at
		}
		if first.IsZero() || a.at.Before(first) {
			first = a.at
		}
		d := a.at.Sub(published).Seconds()
		sum, most = sum+d, max(most, d)
	}
	r.seconds, r.firstAfter = last.Sub(start).Seconds(), first.Sub(start).Seconds()
	r.imagesPerS = float64(b.o.backlog*b.o.count) / r.seconds
	r.requestsPerS = float64(b.o.backlog) / r.seconds
	r.meanRequestS, r.maxRequestS = sum/float64(len(got)), most
	if err := s.settled(ctx, b.o.backlog); err != nil {
		return err
	}
	if err := s.stop(); err != nil {
		return err
	}
	if r.batches, err = batchesOf(s.reg); err != nil {
		return err
	}
	if err := b.checkStored(ctx, got); err != nil {
		return err
	}
	progress("throughput %s: %d requests in %.2f s", r.name, b.o.backlog, r.seconds)
	return nil
}

// fresh deletes and provisions the events stream (so that no event,
// consumer or duplicate-detection state of an earlier run remains) and
// deletes the service's study index.
func (b *bench) fresh(ctx context.Context) error {
	name := events.StreamConfig{}.StreamName()
	if err := b.js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete stream %s: %w", name, err)
	}
	if err := b.js.DeleteKeyValue(ctx, indexBucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("delete bucket %s: %w", indexBucket, err)
	}
	if _, err := events.Provision(ctx, b.js, events.StreamConfig{}); err != nil {
		return fmt.Errorf("provision the streams: %w", err)
	}
	return nil
}

// indexed waits until the service's index consumer has handled and
// acknowledged every study event.
func (b *bench) indexed(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, err := b.js.Consumer(ctx, events.StreamConfig{}.StreamName(), "generate-index")
		if err == nil {
			info, err := c.Info(ctx)
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Consumer >= uint64(len(b.studies)) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the service has not indexed the %d studies: %w", len(b.studies), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// service is one run of the generate service.
type service struct {
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	err    error
	once   sync.Once
}

// startService creates the service with a registry of its own, so that a
// run's batch metrics are that run's alone, and runs it.
func (b *bench) startService(ctx context.Context, js jetstream.JetStream, objects *objstore.Store, cfg batch.Config) (*service, error) {
	s := &service{reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	svc, err := generate.New(ctx, js, generate.Config{
		Model: b.model, Store: objects, Backend: events.BackendObjectStore, Bucket: objstore.DefaultBucket,
		Batch: cfg, Requests: b.o.requests, Logger: b.log, Registerer: s.reg,
	})
	if err != nil {
		return nil, fmt.Errorf("generate service: %w", err)
	}
	ctx, s.cancel = context.WithCancel(ctx)
	go func() { s.done <- svc.Run(ctx) }()
	return s, nil
}

// stop stops the service and waits for it. It may be called again (a
// deferred call on an error path): it stops it once.
func (s *service) stop() error {
	s.once.Do(func() {
		s.cancel()
		if err := <-s.done; err != nil {
			s.err = fmt.Errorf("generate service: %w", err)
		}
	})
	return s.err
}

// settled waits until the service counts n requests answered. A subscriber
// sees the event before its publisher has JetStream's acknowledgement;
// stopping the service then would cancel that publish, and the request,
// answered, would go back to the stream as if it had failed.
func (s *service) settled(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		mfs, err := s.reg.Gather()
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		answered := 0.0
		for _, mf := range mfs {
			if mf.GetName() == "pacsflow_generate_requests_total" {
				for _, m := range mf.GetMetric() {
					answered += m.GetCounter().GetValue()
				}
			}
		}
		if answered >= float64(n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the service counts %.0f requests answered, want %d: %w", answered, n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// batchStats describes a run's model batches from the service's metrics.
type batchStats struct {
	count           uint64
	meanSize, busyS float64
	meanMs          float64
	sizes           string // batches per size range, "1-1:160"
}

func batchesOf(reg *prometheus.Registry) (batchStats, error) {
	var st batchStats
	mfs, err := reg.Gather()
	if err != nil {
		return st, fmt.Errorf("metrics: %w", err)
	}
	found := 0
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		switch mf.GetName() {
		case "pacsflow_generate_batch_seconds":
			st.busyS = h.GetSampleSum()
			found++
		case "pacsflow_generate_batch_size":
			st.count = h.GetSampleCount()
			if st.count > 0 {
				st.meanSize = h.GetSampleSum() / float64(st.count)
			}
			var parts []string
			prevB, prevN := 0.0, uint64(0)
			for _, bk := range h.GetBucket() { // in increasing bounds
				if c := bk.GetCumulativeCount() - prevN; c > 0 {
					parts = append(parts, fmt.Sprintf("%g-%g:%d", prevB+1, bk.GetUpperBound(), c))
				}
				prevB, prevN = bk.GetUpperBound(), bk.GetCumulativeCount()
			}
			if c := st.count - prevN; c > 0 {
				parts = append(parts, fmt.Sprintf(">%g:%d", prevB, c))
			}
			st.sizes = strings.Join(parts, ",")
			found++
		}
	}
	if found != 2 {
		return st, errors.New("metrics: no pacsflow_generate_batch_size or pacsflow_generate_batch_seconds")
	}
	if st.count > 0 {
		st.meanMs = 1000 * st.busyS / float64(st.count)
	}
	return st, nil
}

// arrival is an ai.augmentation.generated event as this process received it.
type arrival struct {
	at  time.Time
	rcv *events.Received
	err error
}

// collector receives the ai.augmentation.generated events on a core NATS
// subscription: the time a subscriber sees them.
type collector struct {
	ch   chan arrival
	sub  *nats.Subscription
	lost atomic.Int64
}

func (b *bench) collect(n int) (*collector, error) {
	c := &collector{ch: make(chan arrival, 2*n+64)}
	subj := events.SubjectAugmentationGenerated + ".>"
	var err error
	c.sub, err = b.nc.Subscribe(subj, func(m *nats.Msg) {
		a := arrival{at: time.Now()}
		a.rcv, a.err = events.Decode(m.Subject, m.Header, m.Data)
		select {
		case c.ch <- a:
		default:
			// Never block the connection's delivery: an unexpected flood is
			// counted and fails the run instead.
			c.lost.Add(1)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subj, err)
	}
	if err := b.nc.Flush(); err != nil {
		c.close()
		return nil, fmt.Errorf("subscribe %s: %w", subj, err)
	}
	return c, nil
}

func (c *collector) close() { _ = c.sub.Unsubscribe() }

// generated is a request's event as received.
type generated struct {
	at   time.Time
	data *events.AugmentationGenerated
}

// wait collects events until every request of want has its event, and
// checks that each has count synthetic images.
func (c *collector) wait(ctx context.Context, want map[string]bool, count int, timeout time.Duration) (map[string]*generated, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	got := map[string]*generated{}
	for len(got) < len(want) {
		select {
		case a := <-c.ch:
			if a.err != nil {
				return nil, fmt.Errorf("generated event: %w", a.err)
			}
			var g events.AugmentationGenerated
			if err := json.Unmarshal(a.rcv.Data, &g); err != nil {
				return nil, fmt.Errorf("generated event %s: %w", a.rcv.ID, err)
			}
			if !want[g.RequestID] {
				return nil, fmt.Errorf("generated event %s answers request %s, not one of this run", a.rcv.ID, g.RequestID)
			}
			if len(g.Objects) != count || !g.Synthetic {
				return nil, fmt.Errorf("request %s: %d images (synthetic %t), want %d", g.RequestID, len(g.Objects), g.Synthetic, count)
			}
			if got[g.RequestID] == nil {
				got[g.RequestID] = &generated{at: a.at, data: &g}
			}
		case <-deadline.C:
			return nil, fmt.Errorf("%d of %d requests without ai.augmentation.generated after %v", len(want)-len(got), len(want), timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if n := c.lost.Load(); n > 0 {
		return nil, fmt.Errorf("%d generated events not recorded (the collector's buffer was full)", n)
	}
	return got, nil
}

// checkStored checks that the events stream holds one generated event per
// request and that every image is in the object store, as its event says.
func (b *bench) checkStored(ctx context.Context, got map[string]*generated) error {
	st, err := b.js.Stream(ctx, events.StreamConfig{}.StreamName())
	if err != nil {
		return fmt.Errorf("events stream: %w", err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.SubjectAugmentationGenerated+".>"))
	if err != nil {
		return fmt.Errorf("events stream: %w", err)
	}
	var stored uint64
	for _, c := range info.State.Subjects {
		stored += c
	}
	if stored != uint64(len(got)) {
		return fmt.Errorf("the stream holds %d ai.augmentation.generated events, want %d", stored, len(got))
	}
	for _, g := range got {
		for _, o := range g.data.Objects {
			obj, err := b.store.Stat(ctx, o.Object.Key)
			if err != nil {
				return fmt.Errorf("request %s: image %s: %w", g.data.RequestID, o.SOPInstanceUID, err)
			}
			if obj.SHA256 != o.Object.SHA256 || o.Object.Backend != events.BackendObjectStore {
				return fmt.Errorf("request %s: image %s: stored %s, the event says %s in %s", g.data.RequestID, o.SOPInstanceUID,
					obj.SHA256, o.Object.SHA256, o.Object.Backend)
			}
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
