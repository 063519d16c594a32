package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/services/notify"
)

// notifyFlags are the notify service's flags, in `pacsflow up` and
// `pacsflow notify`.
type notifyFlags struct {
	enabled          *bool // only in up
	token, users     *string
	rules, publicURL *string
	attempts         *int
	timeout, maxAge  *time.Duration
}

func addNotifyFlags(fs *flag.FlagSet, optional bool) *notifyFlags {
	f := &notifyFlags{
		token:     fs.String("auth-token", "", "bearer token the worklist page and API accept (prefer PACSFLOW_AUTH_TOKEN: flags show in ps); needed, or --auth-users, to listen beyond loopback"),
		users:     fs.String("auth-users", "", "htpasswd file of users with bcrypt hashes (htpasswd -B) for the worklist page and API (browser basic authentication)"),
		rules:     fs.String("notify-rules", "", "JSON file of notification rules (see docs/notify.md): triaged studies matching a rule are posted, signed with HMAC-SHA256, or e-mailed"),
		publicURL: fs.String("public-url", "", "the worklist page's address as webhook receivers reach it, for links in notifications"),
		attempts:  fs.Int("webhook-attempts", 8, "attempts at a notification (webhook or e-mail) before it goes to the dead letters (exponential backoff from 2 s to 5 min, ±20% jitter)"),
		timeout:   fs.Duration("webhook-timeout", 10*time.Second, "time a webhook receiver (or the SMTP server) has to take each attempt"),
		maxAge:    fs.Duration("worklist-max-age", 0, "drop worklist entries this long after their last change; 0 keeps them"),
	}
	if optional {
		f.enabled = fs.Bool("notify", true, "run the notify service: the worklist page and API at --http-addr, worklist.updated events, webhooks")
	}
	return f
}

// wanted reports whether up runs the service.
func (f *notifyFlags) wanted() bool { return f.enabled == nil || *f.enabled }

// auth reads the credential flags.
func (f *notifyFlags) auth() (*notify.Auth, error) {
	a := &notify.Auth{Token: *f.token}
	if *f.users != "" {
		users, err := notify.LoadUsers(*f.users)
		if err != nil {
			return nil, fmt.Errorf("--auth-users: %w", err)
		}
		a.Users = users
	}
	return a, nil
}

// config checks the flags and returns the service's configuration; the
// credential must allow httpAddr ("" when nothing listens).
func (f *notifyFlags) config(objects storage.Reader, streams events.StreamConfig, replicas int, httpAddr string) (notify.Config, error) {
	auth, err := f.auth()
	if err != nil {
		return notify.Config{}, err
	}
	if httpAddr != "" {
		if err := auth.Exposed(httpAddr); err != nil {
			return notify.Config{}, fmt.Errorf("--http-addr %w", err)
		}
	}
	var rules notify.Rules
	if *f.rules != "" {
		if rules, err = notify.LoadRules(*f.rules, os.Getenv); err != nil {
			return notify.Config{}, fmt.Errorf("--notify-rules: %w", err)
		}
	}
	return notify.Config{
		Objects: objects, Streams: streams, KVReplicas: replicas, MaxAge: *f.maxAge, Auth: auth,
		Webhooks: notify.WebhookConfig{Rules: rules.Webhooks, SMTP: rules.SMTP, Attempts: *f.attempts, Timeout: *f.timeout, PublicURL: *f.publicURL},
		Source:   "pacsflow/notify/" + hostname(),
	}, nil
}

// describe is the line `up` and `notify` print once the service runs.
func (f *notifyFlags) describe(cfg notify.Config, httpAddr string) string {
	page := "no page (--http-addr is empty)"
	if httpAddr != "" {
		page = "worklist page at http://" + httpAddr + "/"
		if !cfg.Auth.Enabled() {
			page += " (no credential: loopback only)"
		}
	}
	return fmt.Sprintf("notify: %s; changes on %s.>; %d webhook rule(s)", page, events.SubjectWorklistUpdated, len(cfg.Webhooks.Rules))
}

// newNotify creates the service with the process's logger and registry.
func newNotify(ctx context.Context, js jetstream.JetStream, cfg notify.Config, log *slog.Logger, reg prometheus.Registerer) (*notify.Service, error) {
	cfg.Logger, cfg.Registerer = log, reg
	return provision(ctx, log, "notify", notify.New, js, cfg)
}

func runNotify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("notify --nats-url URL [flags]",
		"Runs the notify service against an external NATS JetStream: it keeps the prioritized\n"+
			"radiology worklist (JetStream key-value bucket pacsflow-worklist) from the study events and\n"+
			"the model's results, serves the worklist page and its JSON API (/api/v1/, OpenAPI at\n"+
			"/api/v1/openapi.json) with live updates at --http-addr, announces changes on\n"+
			"worklist.updated.<change>.<level>, and posts signed webhooks by --notify-rules. Several\n"+
			"processes may run: they share the work and each serves the whole worklist. Beyond\n"+
			"loopback the page and API need a credential (--auth-token or --auth-users). Storage flags\n"+
			"must name the store ingest writes to (for the previews).", stderr)
	sf := addServiceFlags(fs, "127.0.0.1:8082", "the worklist page, its API, /metrics, /healthz and /readyz")
	nf := addNotifyFlags(fs, false)
	log, err := sf.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	// Refuse a bad configuration before connecting.
	if _, err := nf.config(nil, events.StreamConfig{}, 1, *sf.httpAddr); err != nil {
		return err
	}
	p, err := sf.connect(ctx, "pacsflow-notify", log, stdout)
	if err != nil {
		return err
	}
	defer p.nc.Close()
	cfg, err := nf.config(p.store, events.StreamConfig{Replicas: p.replicas}, p.replicas, p.httpAddr)
	if err != nil {
		return err
	}
	svc, err := newNotify(ctx, p.js, cfg, log, p.reg)
	if err != nil {
		return err
	}
	return p.serve(ctx, svc.Ready, nf.describe(cfg, p.httpAddr), svc.Run, svc.Routes)
}
