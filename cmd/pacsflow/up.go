package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pacsflow/pacsflow/pkg/deid"
	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/fsstore"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
	"github.com/pacsflow/pacsflow/pkg/telemetry"
	"github.com/pacsflow/pacsflow/services/analytics"
	"github.com/pacsflow/pacsflow/services/generate"
	"github.com/pacsflow/pacsflow/services/ingest"
	"github.com/pacsflow/pacsflow/services/latency"
	"github.com/pacsflow/pacsflow/services/notify"
	"github.com/pacsflow/pacsflow/services/understand"
)

// pipelineFlags are the flags of `pacsflow up` and `pacsflow ingest`.
type pipelineFlags struct {
	scp                 *listenerFlags
	store               *storageFlags
	natsListen, natsURL *string
	httpAddr            *string
	replicas            *int
	strict              *bool
	quiet, maxWait      *time.Duration
	minFree             *int64
	minFreeRatio        *float64
	maxInstance         *int64
	syntheticAEs        *string
	streamMaxAge        *time.Duration
	otlp                *string
	sampleRatio         *float64
	analytics           *bool
	analyticsKey, dates *string
	level, format       *string
	understand          *understandFlags // only in up
	generate            *generateFlags   // only in up
	notify              *notifyFlags     // only in up
}

// storageFlags name the store instances are kept in.
type storageFlags struct {
	data, backend, bucket *string
}

func addStorageFlags(fs *flag.FlagSet) *storageFlags {
	return &storageFlags{
		data:    fs.String("data", "pacsflow-data", "data folder: the embedded JetStream store (jetstream/) and filesystem storage (instances/)"),
		backend: fs.String("storage", "objectstore", "where instances are stored: objectstore (NATS JetStream object store) or fs (files under --data/instances)"),
		bucket:  fs.String("bucket", "pacsflow-instances", "object store bucket"),
	}
}

func addPipelineFlags(fs *flag.FlagSet, embedded bool) *pipelineFlags {
	f := &pipelineFlags{scp: addListenerFlags(fs, "dicom-addr"), store: addStorageFlags(fs)}
	if embedded {
		f.natsListen = fs.String("nats-listen", "127.0.0.1:4222", "where the embedded NATS server accepts clients (the nats CLI, other services); empty: in-process only")
		f.natsURL = fs.String("nats-url", "", "use this external NATS server (with JetStream) instead of the embedded one")
	} else {
		f.natsURL = fs.String("nats-url", nats.DefaultURL, "NATS server with JetStream (comma-separated URLs for a cluster)")
	}
	f.httpAddr = fs.String("http-addr", "127.0.0.1:8080", "HTTP address for /metrics, /healthz and /readyz; empty disables it")
	f.replicas = addReplicasFlag(fs)
	f.strict = fs.Bool("strict-durability", false, "fsync before every Success: each file and folder (fs storage), and every JetStream write (embedded server)")
	f.quiet = fs.Duration("quiet-period", 2*time.Second, "a study is received when its associations ended and nothing came for this long")
	f.maxWait = fs.Duration("max-wait", 10*time.Minute, "report a study this long after its first instance even if an association is still open")
	f.minFree = fs.Int64("min-free-bytes", 5e9, "refuse associations and instances when free storage is below min(this, --min-free-ratio of the total)")
	f.minFreeRatio = fs.Float64("min-free-ratio", 0.10, "see --min-free-bytes")
	f.maxInstance = fs.Int64("max-instance-bytes", 0, "refuse larger instances with A700; 0: no limit")
	f.syntheticAEs = fs.String("synthetic-ae", "", "calling AE titles allowed to send synthetic images (Conversion Type SYN, Image Type SYNTHETIC: pacsflow generate's), comma-separated, '*' for any; from others they get 0124")
	f.streamMaxAge = fs.Duration("events-max-age", 0, "discard events older than this from the stream; 0 keeps them")
	f.otlp = fs.String("otlp-endpoint", "", "send traces (C-STORE, storage, publish, study report, consumers) over OTLP/HTTP to this URL, e.g. http://collector:4318; empty: no tracing")
	f.sampleRatio = fs.Float64("trace-sample-ratio", 0.1, "share of traces recorded when tracing is on (decided at the C-STORE, followed downstream)")
	f.analytics = fs.Bool("analytics", true, "publish the de-identified projection of the events (DICOM PS3.15 Annex E) on analytics.>")
	f.analyticsKey = fs.String("analytics-key-file", "", "pseudonymization key (32+ bytes; created with random bytes if missing; every process of a deployment needs the same one); default --data/analytics.key")
	f.dates = fs.String("analytics-dates", "remove", "dates in analytics events: remove, or shift (consistently per patient)")
	f.level, f.format = logFlags(fs)
	if embedded {
		f.understand = addUnderstandFlags(fs, true)
		f.generate = addGenerateFlags(fs, true)
		f.notify = addNotifyFlags(fs, true)
	}
	return f
}

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("up [flags]",
		"Runs the pacsflow pipeline on this machine: an embedded NATS server with JetStream, storing\n"+
			"under --data, and the ingest service: a DICOM C-STORE SCP that stores every instance and\n"+
			"publishes pacs.instance.stored, pacs.study.received and pacs.study.updated events; the\n"+
			"understand service with the model of --model (ai.findings, ai.report.draft, ai.triage\n"+
			"and ai.ask, see pacsflow understand --help); the generate service (synthetic images on\n"+
			"request); the notify service (--notify: the prioritized worklist page and its API at\n"+
			"--http-addr, worklist.updated events, webhooks by --notify-rules); the de-identified\n"+
			"projection of the pacs events on analytics.> (--analytics); and the recorder of dead\n"+
			"letters (events consumers gave up on, see pacsflow dlq).\n"+
			"It prints where everything listens. Ctrl-C stops accepting associations, lets active ones\n"+
			"finish (10 s), stops the services, then NATS.", stderr)
	f := addPipelineFlags(fs, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return runPipeline(ctx, f, true, stdout, stderr)
}

func runIngest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ingest --nats-url URL [flags]",
		"Runs the ingest service against an external NATS JetStream (server or cluster), with the\n"+
			"analytics projection (--analytics) and the dead-letter recorder as in pacsflow up: several\n"+
			"such processes may share one JetStream, also for parts of the same study; the projection\n"+
			"and the recorder share their durable consumers, so each event is handled once.", stderr)
	f := addPipelineFlags(fs, false)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return runPipeline(ctx, f, false, stdout, stderr)
}

// runPipeline starts the components in order and stops them in reverse:
// DICOM listeners first (stop accepting, finish or abort associations),
// then the study assembler, the HTTP server, the NATS connection (drained)
// and the embedded NATS server last.
func runPipeline(ctx context.Context, f *pipelineFlags, embedded bool, stdout, stderr io.Writer) error {
	log, err := newLogger(stderr, *f.level, *f.format)
	if err != nil {
		return err
	}
	// Refuse bad DICOM settings before anything starts.
	if _, err := f.scp.serverConfig(nil); err != nil {
		return err
	}
	if f.understand != nil && f.understand.enabled() {
		if _, err := f.understand.policy(); err != nil {
			return err
		}
		if _, err := generate.ParsePolicy(*f.generate.policy); err != nil {
			return fmt.Errorf("--generate-policy: %w", err)
		}
	}
	if f.notify != nil && f.notify.wanted() {
		if _, err := f.notify.config(nil, events.StreamConfig{}, *f.replicas, *f.httpAddr); err != nil {
			return err
		}
	}
	data := *f.store.data
	if (embedded && *f.natsURL == "") || *f.store.backend == "fs" {
		if err := os.MkdirAll(data, 0o755); err != nil {
			return fmt.Errorf("create data folder: %w", err)
		}
	}

	var ns *natsserver.Server
	var nc *nats.Conn
	if embedded && *f.natsURL == "" {
		cfg := natsserver.Config{StoreDir: filepath.Join(data, "jetstream"), Listen: *f.natsListen}
		if *f.strict {
			cfg.SyncInterval = -1
		}
		if ns, err = natsserver.Start(cfg); err != nil {
			return err
		}
		defer ns.Shutdown()
		if url := ns.ClientURL(); url != "" {
			fmt.Fprintf(stdout, "NATS (embedded, JetStream in %s) listening on %s\n", cfg.StoreDir, url)
		}
		nc, err = ns.Connect(nats.MaxReconnects(-1))
	} else {
		nc, err = connectNATS(ctx, *f.natsURL, "pacsflow-ingest", log)
		if err == nil {
			fmt.Fprintf(stdout, "NATS at %s\n", nc.ConnectedUrl())
		}
	}
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	replicas, err := resolveReplicas(ctx, js, *f.replicas, log)
	if err != nil {
		return err
	}
	store, bucket, err := f.store.open(ctx, nc, replicas, *f.strict, log)
	if err != nil {
		return err
	}
	reg := newRegistry()
	setup, cancelSetup := context.WithTimeout(ctx, 30*time.Second)
	defer cancelSetup()
	stopTelemetry, err := telemetry.Setup(setup, telemetry.Config{ServiceName: "pacsflow", OTLPEndpoint: *f.otlp, SampleRatio: *f.sampleRatio, Registerer: reg})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTelemetry(sctx); err != nil {
			log.Warn("flushing telemetry", "err", err)
		}
	}()
	var space func(context.Context) (storage.Space, error)
	if ns != nil {
		dir := filepath.Join(data, "jetstream")
		space = func(context.Context) (storage.Space, error) { return fsstore.DiskSpace(dir) }
	}
	streams := events.StreamConfig{Replicas: replicas, MaxAge: *f.streamMaxAge}
	svc, err := startup(ctx, log, "provision ingest", func(ctx context.Context) (*ingest.Service, error) {
		return ingest.New(ctx, ingest.Config{
			Space:   space,
			Backend: *f.store.backend, Bucket: bucket,
			Stream:      streams,
			KVReplicas:  replicas,
			QuietPeriod: *f.quiet, MaxWait: *f.maxWait,
			MinFreeBytes: *f.minFree, MinFreeRatio: *f.minFreeRatio, MaxInstanceBytes: *f.maxInstance,
			SyntheticAEs: splitList(*f.syntheticAEs),
			Logger:       log, Registerer: reg,
		}, nc, store)
	})
	if err != nil {
		return err
	}
	scpCfg, err := f.scp.serverConfig(svc)
	if err != nil {
		return err
	}
	scpCfg.Access = svc.Authorizer(scpCfg.Access)
	scpCfg.AssociationEnded = svc.AssociationEnded
	scpCfg.Logger = log
	srv, err := dimse.NewServer(scpCfg)
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	svcCtx, stopSvc := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSvc()
	// The ingest side's components are started again when they fail;
	// the model services and notify run once (their batchers and streams
	// to the page end with them), and their failure is logged.
	restarted := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			supervise(svcCtx, log, name, fn)
		}()
	}
	once := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(svcCtx); err != nil && svcCtx.Err() == nil {
				log.Error(name+" stopped", "err", err)
			}
		}()
	}
	restarted("study assembler", svc.Run)
	restarted("dead-letter reconciler", func(ctx context.Context) error {
		return events.RunDeadLetterReconciler(ctx, js, events.ReconcilerConfig{Streams: streams, Logger: log})
	})
	restarted("study latency recorder", func(ctx context.Context) error {
		return latency.Run(ctx, js, latency.Config{Stream: streams.StreamName(), Logger: log})
	})
	var gsvc *generate.Service
	if f.understand != nil && f.understand.enabled() {
		m, ucfg, err := f.understand.open(ctx, store, streams, replicas, reg, log, stdout)
		if err != nil {
			return err
		}
		usvc, err := provision(ctx, log, "understand", understand.New, js, ucfg)
		if err != nil {
			m.Close()
			return err
		}
		services := map[string]func(context.Context) error{"understand": usvc.Run}
		if f.generate.wanted(m) {
			gcfg, err := f.generate.config(m, store, *f.store.backend, bucket, streams, replicas)
			if err == nil {
				gcfg.Logger, gcfg.Registerer = log, reg
				if gsvc, err = provision(ctx, log, "generate", generate.New, js, gcfg); err == nil {
					services["generate"] = gsvc.Run
				}
			}
			if err != nil {
				m.Close()
				return err
			}
		}
		// The model services share the model: it is closed once both stopped.
		var models sync.WaitGroup
		for name, svc := range services {
			models.Add(1)
			once(name, func(ctx context.Context) error {
				defer models.Done()
				return svc(ctx)
			})
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			models.Wait()
			m.Close()
		}()
		fmt.Fprintln(stdout, f.understand.describe())
		if len(services) > 1 {
			fmt.Fprintln(stdout, generateDescription)
		}
	}
	var nsvc *notify.Service
	if f.notify != nil && f.notify.wanted() {
		ncfg, err := f.notify.config(store, streams, replicas, *f.httpAddr)
		if err != nil {
			return err
		}
		if nsvc, err = newNotify(ctx, js, ncfg, log, reg); err != nil {
			return err
		}
		once("notify", nsvc.Run)
		fmt.Fprintln(stdout, f.notify.describe(ncfg, *f.httpAddr))
	}
	if *f.analytics {
		acfg, err := f.analyticsConfig(streams, log)
		if err != nil {
			return err
		}
		restarted("analytics projection", func(ctx context.Context) error { return analytics.Run(ctx, js, acfg) })
		fmt.Fprintf(stdout, "analytics: de-identified events on analytics.> (dates: %s)\n", *f.dates)
	}
	if *f.httpAddr != "" {
		var routes []func(*http.ServeMux)
		if gsvc != nil {
			routes = append(routes, gsvc.Routes)
		}
		if nsvc != nil {
			routes = append(routes, nsvc.Routes)
		}
		hs, err := startHTTP(*f.httpAddr, reg, svc.Ready, log, stdout, routes...)
		if err != nil {
			return err
		}
		defer shutdownHTTP(hs)
	}
	lns, err := f.scp.listen(stdout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "storage: %s; study quiet period %s, maximum wait %s\n", describeStorage(*f.store.backend, bucket, data), *f.quiet, *f.maxWait)
	err = serveDICOM(ctx, srv, lns, log)
	stopSvc()
	wg.Wait()
	if derr := nc.Drain(); derr != nil && !errors.Is(derr, nats.ErrConnectionClosed) {
		log.Warn("draining the NATS connection", "err", derr)
	}
	log.Info("stopped")
	return err
}

// analyticsConfig reads (or creates) the pseudonymization key and checks
// the de-identification settings.
func (f *pipelineFlags) analyticsConfig(streams events.StreamConfig, log *slog.Logger) (analytics.Config, error) {
	path := *f.analyticsKey
	if path == "" {
		path = filepath.Join(*f.store.data, "analytics.key")
	}
	key, err := analytics.LoadOrCreateKey(path)
	if err != nil {
		return analytics.Config{}, err
	}
	mode := deid.DateRemove
	switch *f.dates {
	case "remove":
	case "shift":
		mode = deid.DateShift
	default:
		return analytics.Config{}, fmt.Errorf("--analytics-dates %q: want remove or shift", *f.dates)
	}
	cfg := analytics.Config{Deid: deid.Config{Key: key, DateMode: mode}, Streams: streams, Source: "pacsflow/analytics", Logger: log}
	if _, err := deid.New(cfg.Deid); err != nil {
		return analytics.Config{}, fmt.Errorf("pseudonymization key %s: %w", path, err)
	}
	return cfg, nil
}

// objectAckTimeout bounds the wait for one chunk's acknowledgement: a
// stream leader elected anew answers within a few seconds.
const objectAckTimeout = 10 * time.Second

// open opens the store; strict syncs every file and folder of fs storage.
func (f *storageFlags) open(ctx context.Context, nc *nats.Conn, replicas int, strict bool, log *slog.Logger) (storage.Store, string, error) {
	switch *f.backend {
	case "fs":
		s, err := fsstore.New(fsstore.Config{Root: filepath.Join(*f.data, "instances"), Sync: strict})
		return s, "", err
	case "objectstore":
		// A chunk acknowledgement lost with its stream's leader would
		// otherwise hold the C-STORE until the peer gives up; timed out, the
		// store reports itself unavailable and the peer gets A700.
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(objectAckTimeout))
		if err != nil {
			return nil, "", err
		}
		s, err := startup(ctx, log, "open bucket "+*f.bucket, func(ctx context.Context) (*objstore.Store, error) {
			return objstore.New(ctx, js, objstore.Config{Bucket: *f.bucket, Replicas: replicas})
		})
		return s, *f.bucket, err
	}
	return nil, "", fmt.Errorf("--storage %q: want objectstore or fs", *f.backend)
}

// newRegistry is a Prometheus registry with the Go runtime's and the process's metrics.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func describeStorage(backend, bucket, data string) string {
	if backend == "fs" {
		return "files under " + filepath.Join(data, "instances")
	}
	return "JetStream object store bucket " + bucket
}

// startHTTP serves /metrics, /healthz (the process runs), /readyz (ready
// says it can work, e.g. ingest: broker reachable, storage has room; nil:
// always), /debug/pprof, and the services' own routes.
func startHTTP(addr string, reg *prometheus.Registry, ready func(context.Context) error, log *slog.Logger, stdout io.Writer, routes ...func(*http.ServeMux)) (*http.Server, error) {
	mux := http.NewServeMux()
	for _, add := range routes {
		add(mux)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	// Profiles for diagnosing a slow or stuck process; the HTTP address is
	// loopback by default.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready == nil {
			fmt.Fprintln(w, "ready")
			return
		}
		if err := ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server stopped", "err", err)
		}
	}()
	fmt.Fprintf(stdout, "HTTP (metrics, health) listening on http://%s\n", ln.Addr())
	return hs, nil
}

func shutdownHTTP(hs *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = hs.Shutdown(ctx)
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
