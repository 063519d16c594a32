package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/batch"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/genimage"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/services/generate"
)

// generateFlags are the generate service's flags, in `pacsflow up` and
// `pacsflow generate serve`.
type generateFlags struct {
	enabled       *bool
	policy, root  *string
	batchSize     *int
	batchWait     *time.Duration
	requests      *int
	maxDeliverGen *int
}

func addGenerateFlags(fs *flag.FlagSet, optional bool) *generateFlags {
	f := &generateFlags{
		policy:        fs.String("generate-policy", "", "generate images for studies with a finding: label=task:count[:prompt], comma-separated, e.g. 'nodule=synthesize:4'"),
		root:          fs.String("synthetic-uid-root", "", "UID root reserved for generated (synthetic) objects, at most 39 characters; empty: 2.25 UUID-derived UIDs"),
		batchSize:     fs.Int("generate-batch-size", 16, "largest generate batch: images of all requests in flight share batches"),
		batchWait:     fs.Duration("generate-batch-wait", 5*time.Millisecond, "how long a generate batch's first image waits for more"),
		requests:      fs.Int("generate-requests", 8, "requests worked on at once by this process"),
		maxDeliverGen: fs.Int("generate-max-deliver", 5, "attempts at a request before it goes to the dead letters"),
	}
	if optional {
		f.enabled = fs.Bool("generate", true, "run the generate service (ai.augmentation.requested → synthetic DICOM images) when the model has the generate signature")
	}
	return f
}

// config checks the flags and returns the service's configuration around an open model.
// generateDescription is the line `up` and `generate serve` print once the
// service runs.
var generateDescription = fmt.Sprintf("generate: requests on %s.>, synthetic DICOM images stored and announced on %s.>",
	events.SubjectAugmentationRequested, events.SubjectAugmentationGenerated)

func (f *generateFlags) config(m generate.Model, store generate.Store, backend, bucket string, streams events.StreamConfig, replicas int) (generate.Config, error) {
	rules, err := generate.ParsePolicy(*f.policy)
	if err != nil {
		return generate.Config{}, fmt.Errorf("--generate-policy: %w", err)
	}
	return generate.Config{
		Model: m, Store: store, Backend: backend, Bucket: bucket,
		Objects: genimage.Config{UIDRoot: *f.root}, Policy: rules,
		Batch:    batch.Config{MaxSize: *f.batchSize, MaxWait: *f.batchWait},
		Requests: *f.requests, MaxDeliver: *f.maxDeliverGen, Streams: streams, KVReplicas: replicas,
		Source: "pacsflow/generate/" + hostname(),
	}, nil
}

// wanted reports whether up runs the service with model m.
func (f *generateFlags) wanted(m *model.Model) bool {
	return *f.enabled && m.Contract().Has(model.SigGenerate)
}

func runGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSubcommand(ctx, "generate", map[string]command{
		"request": {"ask the generate service for images derived from a study", runGenerateRequest},
		"fetch":   {"save the images of a request as DICOM files or PNG previews", runGenerateFetch},
		"serve":   {"run the generate service against an external NATS JetStream", runGenerateServe},
	}, args, stdout, stderr)
}

func runGenerateServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("generate serve --nats-url URL [flags]",
		"Runs the generate service against an external NATS JetStream, as pacsflow up does: it\n"+
			"takes requests on ai.augmentation.requested.<task> (pacsflow generate request, POST\n"+
			"/v1/augmentations on --http-addr, or the policy rules of --generate-policy), runs the\n"+
			"model's generate signature in batches shared by all requests, stores each image as a\n"+
			"DICOM instance of a synthetic study in the store ingest writes to, and publishes\n"+
			"ai.augmentation.generated.<task>. Run one per GPU node: the processes share the requests.\n"+
			"Generated images are synthetic, never clinical: see docs/synthetic-objects.md.", stderr)
	sf := addServiceFlags(fs, "127.0.0.1:8083", "the request and preview endpoints, /metrics, /healthz and /readyz")
	mf := addModelFlags(fs, false)
	gf := addGenerateFlags(fs, false)
	log, err := sf.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if _, err := generate.ParsePolicy(*gf.policy); err != nil {
		return fmt.Errorf("--generate-policy: %w", err)
	}
	p, err := sf.connect(ctx, "pacsflow-generate", log, stdout)
	if err != nil {
		return err
	}
	defer p.nc.Close()
	m, err := mf.open(ctx, stdout)
	if err != nil {
		return err
	}
	defer m.Close()
	if !m.Contract().Has(model.SigGenerate) {
		return fmt.Errorf("--model %s has no %s signature", *mf.model, model.SigGenerate)
	}
	cfg, err := gf.config(m, p.store, *sf.store.backend, p.bucket, events.StreamConfig{Replicas: p.replicas}, p.replicas)
	if err != nil {
		return err
	}
	cfg.Logger, cfg.Registerer = log, p.reg
	svc, err := provision(ctx, log, "generate", generate.New, p.js, cfg)
	if err != nil {
		return err
	}
	return p.serve(ctx, nil, generateDescription, svc.Run, svc.Routes)
}

func runGenerateRequest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("generate request --study UID [flags]",
		"Publishes ai.augmentation.requested: the generate service (in pacsflow up) makes --count\n"+
			"images with the model's generate signature from the study (for restore and convert, from\n"+
			"its image --sop, default its first image the model accepts), stores each as a new DICOM\n"+
			"instance of a synthetic study (Secondary Capture, marked synthetic: see\n"+
			"docs/synthetic-objects.md) and publishes ai.augmentation.generated. Image i uses seed\n"+
			"--seed+i: the same request gives the same pixels. With --wait it prints the objects.", stderr)
	natsURL := fs.String("nats-url", nats.DefaultURL, "NATS server of the pipeline")
	study := fs.String("study", "", "Study Instance UID of the source study (required)")
	sop := fs.String("sop", "", "SOP Instance UID of the source image (default: the study's first image the model accepts)")
	task := fs.String("task", events.TaskSynthesize, "synthesize, restore or convert")
	prompt := fs.String("prompt", "", "what to generate, e.g. 'nodule' or 'normal' (synthesize)")
	count := fs.Int("count", 1, "how many images (1 to 64)")
	seed := fs.Int64("seed", 0, "seed of the first image")
	wait := fs.Duration("wait", 0, "wait this long for the images and print them; 0: do not wait")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *study == "" || fs.NArg() != 0 {
		fs.Usage()
		return errUsage
	}
	r := &events.AugmentationRequested{StudyInstanceUID: *study, SOPInstanceUID: *sop, Task: *task, Prompt: *prompt, Count: *count, Seed: *seed}
	e := generate.NewRequest("cli", r)
	if err := generate.Validate(r); err != nil {
		return err
	}
	nc, js, err := connectJetStream(*natsURL, "pacsflow-generate-request")
	if err != nil {
		return err
	}
	defer nc.Close()
	if _, err := events.NewPublisher(js, "pacsflow/cli").Publish(ctx, e); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "request %s: %d %s image(s) from study %s\n", r.RequestID, r.Count, r.Task, r.StudyInstanceUID)
	if *wait == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	g, err := findGenerated(ctx, js, r.RequestID, true)
	if err != nil {
		return err
	}
	printGenerated(stdout, g)
	return nil
}

// findGenerated reads the stream for the generated event of a request; with follow it waits
// for one still to come, until ctx ends.
func findGenerated(ctx context.Context, js jetstream.JetStream, requestID string, follow bool) (*events.AugmentationGenerated, error) {
	cons, err := js.OrderedConsumer(ctx, events.StreamConfig{}.StreamName(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectAugmentationGenerated + ".>"},
	})
	if err != nil {
		return nil, fmt.Errorf("read %s.>: %w", events.SubjectAugmentationGenerated, err)
	}
	for {
		info := cons.CachedInfo()
		if !follow && info.NumPending == 0 {
			return nil, fmt.Errorf("no generated images for request %s in the stream", requestID)
		}
		m, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("no generated images for request %s yet: %w", requestID, ctx.Err())
			}
			return nil, err
		}
		var g events.AugmentationGenerated
		if err := json.Unmarshal(m.Data(), &g); err == nil && g.RequestID == requestID {
			return &g, nil
		}
		if meta, err := m.Metadata(); err == nil && meta.NumPending == 0 && !follow {
			return nil, fmt.Errorf("no generated images for request %s in the stream", requestID)
		}
	}
}

func printGenerated(w io.Writer, g *events.AugmentationGenerated) {
	fmt.Fprintf(w, "synthetic study %s (%s by %s %s, from study %s image %s):\n", g.StudyInstanceUID, g.Task, g.Model.Name, g.Model.Version,
		g.SourceStudyInstanceUID, g.SourceSOPInstanceUID)
	for _, o := range g.Objects {
		fmt.Fprintf(w, "  %s seed %d  %s %s (%d bytes)\n", o.SOPInstanceUID, o.Seed, o.Object.Backend, o.Object.Key, o.Object.Size)
	}
}

func runGenerateFetch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("generate fetch --request ID --out DIR [flags]",
		"Saves the images of a request (pacsflow generate request prints its ID) into --out, as\n"+
			"DICOM files (SOP_INSTANCE_UID.dcm) or, with --png, as 8-bit PNG previews. The images are\n"+
			"synthetic: never use them as clinical images.", stderr)
	natsURL := fs.String("nats-url", nats.DefaultURL, "NATS server of the pipeline")
	st := addStorageFlags(fs)
	request := fs.String("request", "", "the request's ID (required)")
	out := fs.String("out", "", "folder to write into (required; created if missing)")
	png := fs.Bool("png", false, "write PNG previews instead of DICOM files")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to look")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *request == "" || *out == "" || fs.NArg() != 0 {
		fs.Usage()
		return errUsage
	}
	nc, js, err := connectJetStream(*natsURL, "pacsflow-generate-fetch")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	g, err := findGenerated(ctx, js, *request, false)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	replicas, err := resolveReplicas(ctx, js, 0, log)
	if err != nil {
		return err
	}
	store, _, err := st.open(ctx, nc, replicas, false, log)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", *out, err)
	}
	for _, o := range g.Objects {
		b, err := storage.ReadAll(ctx, store, o.Object.Key, 0)
		if err != nil {
			return fmt.Errorf("read %s: %w", o.Object.Key, err)
		}
		name := filepath.Join(*out, o.SOPInstanceUID+".dcm")
		if *png {
			if b, err = genimage.PNG(b); err != nil {
				return fmt.Errorf("preview of %s: %w", o.SOPInstanceUID, err)
			}
			name = filepath.Join(*out, o.SOPInstanceUID+".png")
		}
		if err := os.WriteFile(name, b, 0o644); err != nil {
			return err
		}
		fmt.Fprintln(stdout, name)
	}
	if len(g.Objects) == 0 {
		return errors.New("the request produced no images")
	}
	return nil
}
