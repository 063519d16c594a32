package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/batch"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/triage"
	"github.com/pacsflow/pacsflow/services/understand"
)

// modelFlags name the model and how TensorFlow runs it, for every command
// that runs a model service.
type modelFlags struct {
	model, runtime, plugin *string
	intraOp, interOp       *int
	gpuGrowth              *bool
}

func addModelFlags(fs *flag.FlagSet, optional bool) *modelFlags {
	modelHelp := "model directory (a SavedModel that fills the model contract, see pacsflow model inspect); the reference model is model/reference of the repository: small, trained on synthetic phantoms only, not for clinical use"
	if optional {
		modelHelp += "; empty: run without the understand service"
	}
	f := &modelFlags{
		model:     fs.String("model", "model/reference", modelHelp),
		intraOp:   fs.Int("intra-op-threads", 1, "TensorFlow threads per operation (0: one per core); 1 is fastest for the small reference model"),
		interOp:   fs.Int("inter-op-threads", 1, "TensorFlow operations run at once (0: TensorFlow chooses)"),
		gpuGrowth: fs.Bool("gpu-memory-growth", true, "allocate GPU memory as needed rather than all at start-up, so that processes can share a GPU"),
	}
	f.runtime, f.plugin = addRuntimeFlags(fs)
	return f
}

// addRuntimeFlags are the flags that choose what runs a model.
func addRuntimeFlags(fs *flag.FlagSet) (runtime, plugin *string) {
	return fs.String("model-runtime", model.RuntimeTensorFlow, "what runs the model: tensorflow (the SavedModel through TensorFlow's C API, on CPU) or pjrt "+
			"(its StableHLO modules, from model/export_stablehlo.py, through the PJRT plugin of --pjrt-plugin: on NVIDIA GPUs the xla_cuda_plugin.so of the jax-cuda12-pjrt or jax-cuda13-pjrt wheel)"),
		fs.String("pjrt-plugin", "", "the PJRT plugin library the pjrt runtime loads")
}

// open loads the model and says what it is; the caller closes it.
func (f *modelFlags) open(ctx context.Context, stdout io.Writer) (*model.Model, error) {
	if _, err := os.Stat(*f.model); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--model %s: no such directory (the reference model is model/reference of the pacsflow repository: run from there, or give --model DIR)", *f.model)
	}
	start := time.Now()
	m, err := model.Open(ctx, *f.model, model.Options{Runtime: *f.runtime, PJRTPlugin: *f.plugin,
		IntraOpThreads: *f.intraOp, InterOpThreads: *f.interOp, GPUMemoryGrowth: *f.gpuGrowth})
	if err != nil {
		return nil, err
	}
	c := m.Contract()
	fmt.Fprintf(stdout, "model: %s %s from %s on %s, loaded in %v; labels %s; accepts %s\n", c.Model.Name, c.Model.Version, *f.model, *f.runtime,
		time.Since(start).Round(time.Millisecond), strings.Join(c.Labels, ", "), strings.Join(c.Preprocessing.AcceptedModalities, ", "))
	fmt.Fprintf(stdout, "model intended use: %s\n", c.Model.IntendedUse)
	return m, nil
}

// understandFlags are the flags of the understand service, in `pacsflow up`
// and `pacsflow understand`.
type understandFlags struct {
	*modelFlags
	thresholds              *string
	batchSize, batchWorkers *int
	batchWait               *time.Duration
	studies, decoders       *int
	ackWait                 *time.Duration
	maxDeliver              *int
}

func addUnderstandFlags(fs *flag.FlagSet, optional bool) *understandFlags {
	return &understandFlags{
		modelFlags:   addModelFlags(fs, optional),
		thresholds:   fs.String("triage-thresholds", "", "triage thresholds per finding, label=URGENT:STAT, comma-separated, e.g. 'nodule=0.5:0.9,*=0.6:0.95' (* sets the default, 0.5:0.9)"),
		batchSize:    fs.Int("batch-size", 32, "largest model batch: images of all studies in flight share batches"),
		batchWait:    fs.Duration("batch-wait", 5*time.Millisecond, "how long a batch's first image waits for more before the batch runs"),
		batchWorkers: fs.Int("batch-workers", 1, "model batches run at once"),
		studies:      fs.Int("studies", 4, "studies analyzed at once by this process"),
		decoders:     fs.Int("decoders", 0, "images fetched and decoded at once (0: one per CPU)"),
		ackWait:      fs.Duration("ack-wait", 30*time.Second, "a study whose process stopped answering (crashed, hung) goes to another replica after this long"),
		maxDeliver:   fs.Int("max-deliver", 5, "attempts at a study before it goes to the dead letters (pacsflow dlq) with its error"),
	}
}

// enabled reports whether the service is to run (up runs it when --model is set).
func (f *understandFlags) enabled() bool { return *f.model != "" }

// policy reads --triage-thresholds, so that a bad value is refused before anything starts.
func (f *understandFlags) policy() (*triage.Policy, error) {
	p, err := triage.ParsePolicy(*f.thresholds)
	if err != nil {
		return nil, fmt.Errorf("--triage-thresholds: %w", err)
	}
	return &p, nil
}

// open loads the model and returns the service's configuration around it; the caller closes
// the model.
func (f *understandFlags) open(ctx context.Context, objects storage.Reader, streams events.StreamConfig, replicas int,
	reg prometheus.Registerer, log *slog.Logger, stdout io.Writer) (*model.Model, understand.Config, error) {
	policy, err := f.policy()
	if err != nil {
		return nil, understand.Config{}, err
	}
	m, err := f.modelFlags.open(ctx, stdout)
	if err != nil {
		return nil, understand.Config{}, err
	}
	return m, understand.Config{
		Model: m, Objects: objects, Policy: policy,
		Batch:   batch.Config{MaxSize: *f.batchSize, MaxWait: *f.batchWait, Workers: *f.batchWorkers},
		Studies: *f.studies, Decoders: *f.decoders,
		AckWait: *f.ackWait, MaxDeliver: *f.maxDeliver,
		Streams: streams, KVReplicas: replicas,
		Source: "pacsflow/understand/" + hostname(), Logger: log, Registerer: reg,
	}, nil
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

// describe is the line `up` and `understand` print once the service runs.
func (f *understandFlags) describe() string {
	return fmt.Sprintf("understand: results on %s.>, %s.>, %s.>; questions on %s (batches of up to %d, %d studies at once)",
		events.SubjectAIFindings, events.SubjectAIReportDraft, events.SubjectAITriage, events.SubjectAIAsk, *f.batchSize, *f.studies)
}

func runUnderstand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("understand --nats-url URL [flags]",
		"Runs the understand service against an external NATS JetStream: for every study event\n"+
			"(pacs.study.received, pacs.study.updated) it reads the study's images from storage, runs\n"+
			"the model on those it accepts, batching images across studies, and publishes ai.findings,\n"+
			"ai.report.draft and ai.triage; it answers ai.ask requests (pacsflow ask). Run one per GPU\n"+
			"node: the processes share the work (one durable consumer) and the questions. Storage\n"+
			"flags must name the store ingest writes to. Results are machine-generated, never reviewed.", stderr)
	sf := addServiceFlags(fs, "127.0.0.1:8081", "/metrics and /healthz")
	maxAge := fs.Duration("events-max-age", 0, "keep each study's analysis this long (as the events stream keeps events: give ingest's --events-max-age); 0 keeps them")
	uf := addUnderstandFlags(fs, false)
	log, err := sf.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if _, err := uf.policy(); err != nil {
		return err
	}
	p, err := sf.connect(ctx, "pacsflow-understand", log, stdout)
	if err != nil {
		return err
	}
	defer p.nc.Close()
	streams := events.StreamConfig{Replicas: p.replicas, MaxAge: *maxAge}
	m, cfg, err := uf.open(ctx, p.store, streams, p.replicas, p.reg, log, stdout)
	if err != nil {
		return err
	}
	defer m.Close()
	svc, err := provision(ctx, log, "understand", understand.New, p.js, cfg)
	if err != nil {
		return err
	}
	return p.serve(ctx, nil, uf.describe(), svc.Run)
}
