package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/storage"
)

// serviceFlags are the flags every service run on its own against an
// external NATS shares (pacsflow understand, notify, generate serve).
type serviceFlags struct {
	natsURL, httpAddr *string
	store             *storageFlags
	replicas          *int
	level, format     *string
}

func addServiceFlags(fs *flag.FlagSet, httpAddr, httpServes string) *serviceFlags {
	f := &serviceFlags{
		natsURL:  fs.String("nats-url", nats.DefaultURL, "NATS server with JetStream (comma-separated URLs for a cluster)"),
		store:    addStorageFlags(fs),
		replicas: addReplicasFlag(fs),
		httpAddr: fs.String("http-addr", httpAddr, "HTTP address for "+httpServes+"; empty disables it"),
	}
	f.level, f.format = logFlags(fs)
	return f
}

func addReplicasFlag(fs *flag.FlagSet) *int {
	return fs.Int("replicas", 0, "JetStream replicas of the streams, buckets and object store this process creates or updates: 1 on one server, 3 on a cluster; 0: as many as the existing event stream has, else 1")
}

// serviceProcess is a service process connected to NATS and to the store
// ingest writes to.
type serviceProcess struct {
	log      *slog.Logger
	nc       *nats.Conn
	js       jetstream.JetStream
	store    storage.Store
	bucket   string // the object store bucket, if that is the store
	replicas int
	reg      *prometheus.Registry
	httpAddr string
	stdout   io.Writer
}

// parse parses the command line and returns the logger it asks for.
func (f *serviceFlags) parse(fs *flag.FlagSet, args []string, stderr io.Writer) (*slog.Logger, error) {
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	return newLogger(stderr, *f.level, *f.format)
}

// connect connects to NATS, settles the replicas and opens the store,
// waiting for a NATS cluster that is not serving yet; the caller closes
// the process's connection.
func (f *serviceFlags) connect(ctx context.Context, name string, log *slog.Logger, stdout io.Writer) (*serviceProcess, error) {
	nc, err := connectNATS(ctx, *f.natsURL, name, log)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "NATS at %s\n", nc.ConnectedUrl())
	p := &serviceProcess{log: log, nc: nc, reg: newRegistry(), httpAddr: *f.httpAddr, stdout: stdout}
	if p.js, err = jetstream.New(nc); err == nil {
		p.replicas, err = resolveReplicas(ctx, p.js, *f.replicas, log)
	}
	if err == nil {
		p.store, p.bucket, err = f.store.open(ctx, nc, p.replicas, false, log)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return p, nil
}

// serve serves HTTP (unless --http-addr is empty), says what the service
// does, runs it until ctx ends or it fails, then drains the connection.
func (p *serviceProcess) serve(ctx context.Context, ready func(context.Context) error, describe string, run func(context.Context) error, routes ...func(*http.ServeMux)) error {
	if p.httpAddr != "" {
		hs, err := startHTTP(p.httpAddr, p.reg, ready, p.log, p.stdout, routes...)
		if err != nil {
			return err
		}
		defer shutdownHTTP(hs)
	}
	fmt.Fprintln(p.stdout, describe)
	err := run(ctx)
	if derr := p.nc.Drain(); derr != nil && !errors.Is(derr, nats.ErrConnectionClosed) {
		p.log.Warn("draining the NATS connection", "err", derr)
	}
	p.log.Info("stopped")
	return err
}

// connectNATS connects a service to an external NATS server, reconnecting
// forever. When none answers yet (a pod that starts before its NATS
// cluster) it waits, saying so every 10 s, until one does or ctx ends.
func connectNATS(ctx context.Context, url, name string, log *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second), nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "err", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", c.ConnectedUrl()) }))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for waited := time.Duration(0); !nc.IsConnected(); waited += 100 * time.Millisecond {
		if waited%(10*time.Second) == 0 {
			log.Warn("waiting for NATS", "url", url, "waited", waited)
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: %w", url, ctx.Err())
		case <-poll.C:
		}
	}
	return nc, nil
}

// resolveReplicas is n, or for 0 the replicas of the existing event
// stream (1 when there is none yet): a service started without
// --replicas on a cluster must not shrink its R3 buckets to R1 when it
// updates them.
func resolveReplicas(ctx context.Context, js jetstream.JetStream, n int, log *slog.Logger) (int, error) {
	if n > 0 {
		return n, nil
	}
	name := events.StreamConfig{}.StreamName()
	return startup(ctx, log, "look up stream "+name, func(ctx context.Context) (int, error) {
		st, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return 1, nil
		}
		if err != nil {
			return 0, err
		}
		return max(st.CachedInfo().Config.Replicas, 1), nil
	})
}

// startupAttempt bounds one attempt of a start-up step; a JetStream
// request that gets no answer fails after 5 s.
const startupAttempt = 30 * time.Second

// startup runs a start-up step that talks to JetStream until it succeeds,
// fails for a reason waiting cannot cure, or ctx ends: while a NATS
// cluster forms, elects leaders or misses a node, its requests go
// unanswered for a while, and a service waits that out instead of exiting.
func startup[T any](ctx context.Context, log *slog.Logger, what string, step func(context.Context) (T, error)) (T, error) {
	for delay := time.Second; ; delay = min(2*delay, 15*time.Second) {
		actx, cancel := context.WithTimeout(ctx, startupAttempt)
		v, err := step(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !(events.Transient(err) || errors.Is(err, storage.ErrUnavailable)) {
			return v, err
		}
		log.Warn("JetStream not ready; retrying", "step", what, "err", err, "retry_in", delay)
		sleepCtx(ctx, delay)
	}
}

// provision creates a model or notify service with its New, through startup.
func provision[C, S any](ctx context.Context, log *slog.Logger, name string, newService func(context.Context, jetstream.JetStream, C) (S, error), js jetstream.JetStream, cfg C) (S, error) {
	return startup(ctx, log, "provision "+name, func(ctx context.Context) (S, error) { return newService(ctx, js, cfg) })
}

// supervise runs a component that can be started again until ctx ends,
// starting it again (with backoff) whenever it fails: a pipeline that
// lost its study assembler to a broker fault must get it back, not go on
// half working.
func supervise(ctx context.Context, log *slog.Logger, name string, run func(context.Context) error) {
	for delay := time.Second; ctx.Err() == nil; delay = min(2*delay, 30*time.Second) {
		start := time.Now()
		err := run(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			delay = time.Second // it had recovered
		}
		log.Error(name+" stopped; restarting", "err", err, "restart_in", delay)
		sleepCtx(ctx, delay)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
