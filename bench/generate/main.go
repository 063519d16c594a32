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
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/bench/internal/benchkit"
	"github.com/pacsflow/pacsflow/pkg/batch"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
	"github.com/pacsflow/pacsflow/pkg/synth"
	"github.com/pacsflow/pacsflow/services/generate"
)

// targetRatio is what dynamic batching must give over batch 1.
const targetRatio = 3.0

// indexBucket is the generate service's study index
// (services/generate/index.go). It is deleted before each run, as the stream
// is, so that each run indexes its studies afresh.
const indexBucket = "pacsflow-generate-index"

type options struct {
	benchkit.Common
	cpuProfile        string
	size, studies     int
	backlog, count    int
	task, prompt      string
	requests, workers int
	batchSize         int
	batchWait         time.Duration
	modelBatches      []int
	modelTasks        []string
	modelTime         time.Duration
	phases            map[string]bool
	verbose           bool
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
	o.Common.Register(fs)
	fs.IntVar(&o.size, "size", synth.DefaultSize, "rows and columns of the source CR and DX images (16-bit)")
	fs.IntVar(&o.studies, "studies", 4, "source studies; request i names study i mod --studies")
	fs.IntVar(&o.backlog, "backlog", 40, "requests in the throughput backlog")
	fs.IntVar(&o.count, "count", 4, "images a request asks for (1 to 64)")
	fs.StringVar(&o.task, "task", events.TaskRestore, "task of the backlog's requests: "+strings.Join(allTasks, ", "))
	fs.StringVar(&o.prompt, "prompt", "", "prompt of the requests (synthesize: default nodule)")
	fs.IntVar(&o.requests, "requests", 8, "generate.Config.Requests: requests worked on at once (both throughput runs)")
	fs.IntVar(&o.workers, "workers", 1, "batch.Config.Workers: model batches run at once, in both runs")
	fs.IntVar(&o.batchSize, "batch-size", 16, "largest batch of the dynamic-batching run")
	fs.DurationVar(&o.batchWait, "batch-wait", 5*time.Millisecond, "batch wait of the dynamic-batching run")
	batches := fs.String("model-batches", "1,8,16", "batch sizes of the model phase, comma-separated")
	tasks := fs.String("model-tasks", events.TaskRestore+","+events.TaskSynthesize, "tasks of the model phase, comma-separated")
	fs.DurationVar(&o.modelTime, "model-seconds", 2*time.Second, "how long the model phase runs each task and batch size")
	phases := fs.String("phases", strings.Join(allPhases, ","), "phases to run, comma-separated: "+strings.Join(allPhases, ", "))
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the throughput phase to this file (TensorFlow's threads show as external code)")
	fs.BoolVar(&o.verbose, "v", false, "log the service's info lines (one per request)")
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
	if o.modelTasks, err = benchkit.Choices("model-tasks", "task", *tasks, allTasks); err != nil {
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

func main() { benchkit.Main("generate", parseOptions, run) }

// bench is what the phases share.
type bench struct {
	o              *options
	*benchkit.NATS // the server, this process's connection, its object store
	model          *model.Model
	log            *slog.Logger
	studies        []*study
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

func run(ctx context.Context, o *options) (err error) {
	b := &bench{o: o, id: nuid.Next(), modelRate: map[string]map[int]float64{}}
	b.log = benchkit.Logger(o.verbose)
	work, done, err := benchkit.WorkFolder(o.Work, o.Keep, "pacsflow-bench-generate-")
	if err != nil {
		return err
	}
	defer done(&err)
	load0 := benchkit.PrintMachine()

	// The model first: without TensorFlow (a build without -tags
	// tensorflow) there is nothing to measure, and this says so at once.
	start := time.Now()
	if b.model, err = model.Open(ctx, o.Model, o.ModelOptions()); err != nil {
		return fmt.Errorf("open the model: %w", err)
	}
	defer b.model.Close()
	c := b.model.Contract()
	if !c.Has(model.SigGenerate) {
		return fmt.Errorf("model %s %s has no %s signature", c.Model.Name, c.Model.Version, model.SigGenerate)
	}
	benchkit.PrintModel(b.model, &o.Common, start)

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
		Finding: synth.FindingMixed, Seed: uint64(o.Seed)}, synth.Python{Interpreter: o.Python})
	if err != nil {
		return fmt.Errorf("write %d synthetic studies: %w", o.studies, err)
	}
	benchkit.Progress("wrote %d studies, %d instances, %.0f MB in %v", o.studies, res.Instances, float64(res.Bytes)/1e6, time.Since(start).Round(time.Millisecond))

	if b.NATS, err = benchkit.StartNATS(ctx, filepath.Join(work, "nats"), "pacsflow-bench-generate"); err != nil {
		return err
	}
	defer b.NATS.Close()
	if b.studies, err = b.putStudies(ctx, dir, res); err != nil {
		return err
	}

	fmt.Printf("service: %d requests at once, batch workers %d; dynamic batching: up to %d images, wait %v\n",
		o.requests, o.workers, o.batchSize, o.batchWait)
	fmt.Printf("RESULT test=setup cpus=%d gomaxprocs=%d load_start=%s size=%d intra_op=%d inter_op=%d studies=%d backlog=%d count=%d task=%s requests=%d workers=%d batch_size=%d batch_wait_ms=%g\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), strings.ReplaceAll(load0, " ", ","), o.size, o.IntraOp, o.InterOp,
		o.studies, o.backlog, o.count, o.task, o.requests, o.workers, o.batchSize, benchkit.Ms(o.batchWait))
	if o.phases["model"] {
		if err := b.modelPhase(ctx); err != nil {
			return err
		}
	}
	if o.phases["throughput"] {
		if err := benchkit.Profiled(b.o.cpuProfile, b.throughputPhase)(ctx); err != nil {
			return err
		}
	}
	benchkit.PrintEnd()
	return nil
}

// putStudies puts the instances synth wrote into the object store, as
// ingest does, and builds each study's event data (one series per file:
// synth wrote one image per series).
func (b *bench) putStudies(ctx context.Context, dir string, res *synth.Result) ([]*study, error) {
	pre := b.model.Contract().Preprocessing
	var out []*study
	for _, ts := range res.Truth.Studies {
		s := &study{uid: ts.StudyInstanceUID}
		d := benchkit.NewStudyData(ts)
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
				s.source = pre.Input(fr)
			}
			key, err := storage.InstanceKey(ts.StudyInstanceUID, f.SeriesInstanceUID, f.SOPInstanceUID, "v1")
			if err != nil {
				return nil, fmt.Errorf("key of %s: %w", f.Path, err)
			}
			obj, err := b.Store.Put(ctx, key, strings.NewReader(string(data)))
			if errors.Is(err, storage.ErrExists) {
				// A --work folder used again: its NATS store holds the
				// instance from then, byte for byte (synth is deterministic).
				obj, err = b.Store.Stat(ctx, key)
			}
			if err != nil {
				return nil, fmt.Errorf("put %s: %w", f.Path, err)
			}
			d.Add(f, key, obj)
		}
		if s.source.Pixels == nil {
			return nil, fmt.Errorf("study %s has no CR image", s.uid)
		}
		// The event must be one the contract accepts, or the service would
		// never index the study and every request would be dead-lettered.
		var err error
		if s.data, err = d.Done(); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	benchkit.Progress("put %d instances into the object store", res.Instances)
	return out, nil
}

// event is a new pacs.study.received event of the study; its time is set
// when it is published.
func (s *study) event() *events.Event { return benchkit.StudyEvent(s.data) }

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
			fmt.Printf("%-10s batch %-3d %8.1f images/s  %7.1f ms per batch\n", task, n, rate, benchkit.Ms(el)/float64(calls))
			fmt.Printf("RESULT test=model task=%s batch=%d images_per_s=%.1f ms_per_batch=%.1f intra_op=%d inter_op=%d\n",
				task, n, rate, benchkit.Ms(el)/float64(calls), b.o.IntraOp, b.o.InterOp)
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
	batches benchkit.Batches
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
			r.name, r.seconds, r.imagesPerS, r.requestsPerS, r.batches.Count, r.batches.MeanSize, r.batches.Sizes,
			100*r.batches.BusyS/r.seconds, r.batches.MeanMs, r.firstAfter, r.cpuS/r.seconds, 1000*r.cpuS/float64(n))
		fmt.Printf("RESULT test=throughput mode=%s requests=%d count=%d images=%d task=%s seconds=%.3f images_per_s=%.1f requests_per_s=%.2f batches=%d mean_batch=%.2f batch_sizes=%s mean_batch_ms=%.1f model_busy=%.2f first_s=%.3f mean_request_s=%.3f max_request_s=%.3f cpu_cores=%.2f cpu_ms_per_image=%.2f max_size=%d max_wait_ms=%g workers=%d concurrent_requests=%d intra_op=%d inter_op=%d\n",
			r.name, b.o.backlog, b.o.count, n, b.o.task, r.seconds, r.imagesPerS, r.requestsPerS, r.batches.Count, r.batches.MeanSize,
			r.batches.Sizes, r.batches.MeanMs, r.batches.BusyS/r.seconds, r.firstAfter, r.meanRequestS, r.maxRequestS, r.cpuS/r.seconds, 1000*r.cpuS/float64(n), r.cfg.MaxSize, benchkit.Ms(r.cfg.MaxWait), r.cfg.Workers,
			b.o.requests, b.o.IntraOp, b.o.InterOp)
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
	nc, err := b.Server.Connect(nats.Name("pacsflow-bench-generate-service"))
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
	pub := events.NewPublisher(b.JS, "pacsflow/bench")
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

	benchkit.Progress("throughput %s: publishing %d requests", r.name, b.o.backlog)
	col, err := b.collect(b.o.backlog)
	if err != nil {
		return err
	}
	defer col.Close()
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
	benchkit.Progress("throughput %s: service started", r.name)
	start, cpu0 := time.Now(), benchkit.CPUTime()
	s, err := b.startService(ctx, js, objects, r.cfg)
	if err != nil {
		return err
	}
	defer func() { _ = s.stop() }() // an error path; the normal one stops it below
	got, err := awaitGenerated(ctx, col, want, b.o.count, b.o.Timeout)
	if err != nil {
		return err
	}
	r.cpuS = benchkit.CPUTime() - cpu0
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
	benchkit.Progress("throughput %s: %d requests in %.2f s", r.name, b.o.backlog, r.seconds)
	return nil
}

// fresh deletes and provisions the events stream (so that no event,
// consumer or duplicate-detection state of an earlier run remains) and
// deletes the service's study index.
func (b *bench) fresh(ctx context.Context) error {
	if err := benchkit.FreshStream(ctx, b.JS); err != nil {
		return err
	}
	if err := b.JS.DeleteKeyValue(ctx, indexBucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("delete bucket %s: %w", indexBucket, err)
	}
	return nil
}

// indexed waits until the service's index consumer has handled and
// acknowledged every study event.
func (b *bench) indexed(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, err := b.JS.Consumer(ctx, events.StreamConfig{}.StreamName(), "generate-index")
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

// settled waits until the service counts n requests answered (benchkit.Settled).
func (s *service) settled(ctx context.Context, n int) error {
	return benchkit.Settled(ctx, s.reg, benchkit.Counter{Name: "pacsflow_generate_requests_total"}, n, "requests answered")
}

func batchesOf(reg *prometheus.Registry) (benchkit.Batches, error) {
	return benchkit.BatchesOf(reg, "pacsflow_generate", false)
}

// collect receives the ai.augmentation.generated events.
func (b *bench) collect(n int) (*benchkit.Collector, error) {
	return benchkit.Collect(b.Conn, 2*n+64, events.SubjectAugmentationGenerated+".>")
}

// generated is a request's event as received.
type generated struct {
	at   time.Time
	data *events.AugmentationGenerated
}

// awaitGenerated collects events from c until every request of want has its event, and
// checks that each has count synthetic images.
func awaitGenerated(ctx context.Context, c *benchkit.Collector, want map[string]bool, count int, timeout time.Duration) (map[string]*generated, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	got := map[string]*generated{}
	for len(got) < len(want) {
		select {
		case a := <-c.C:
			if a.Err != nil {
				return nil, fmt.Errorf("generated event: %w", a.Err)
			}
			var g events.AugmentationGenerated
			if err := json.Unmarshal(a.Rcv.Data, &g); err != nil {
				return nil, fmt.Errorf("generated event %s: %w", a.Rcv.ID, err)
			}
			if !want[g.RequestID] {
				return nil, fmt.Errorf("generated event %s answers request %s, not one of this run", a.Rcv.ID, g.RequestID)
			}
			if len(g.Objects) != count || !g.Synthetic {
				return nil, fmt.Errorf("request %s: %d images (synthetic %t), want %d", g.RequestID, len(g.Objects), g.Synthetic, count)
			}
			if got[g.RequestID] == nil {
				got[g.RequestID] = &generated{at: a.At, data: &g}
			}
		case <-deadline.C:
			return nil, fmt.Errorf("%d of %d requests without ai.augmentation.generated after %v", len(want)-len(got), len(want), timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if n := c.Lost(); n > 0 {
		return nil, fmt.Errorf("%d generated events not recorded (the collector's buffer was full)", n)
	}
	return got, nil
}

// checkStored checks that the events stream holds one generated event per
// request and that every image is in the object store, as its event says.
func (b *bench) checkStored(ctx context.Context, got map[string]*generated) error {
	stored, err := benchkit.StoredEvents(ctx, b.JS, events.SubjectAugmentationGenerated+".>")
	if err != nil {
		return err
	}
	if stored != uint64(len(got)) {
		return fmt.Errorf("the stream holds %d ai.augmentation.generated events, want %d", stored, len(got))
	}
	for _, g := range got {
		for _, o := range g.data.Objects {
			obj, err := b.Store.Stat(ctx, o.Object.Key)
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
