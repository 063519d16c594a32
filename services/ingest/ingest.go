// Package ingest is pacsflow's front door: a C-STORE handler that streams
// each instance into storage and publishes its event, answering Success
// only once both are acknowledged; and the study assembler, which turns
// stored instances into study events when a study has arrived.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/storage"
)

// Config configures the ingest service. Zero values take the defaults.
type Config struct {
	// SyntheticAEs are the calling AE titles allowed to send synthetic
	// images (Conversion Type SYN, or Image Type with SYNTHETIC: what
	// pacsflow's generate service writes); from any other AE they are
	// refused with 0124 (not authorized), so that generated images never
	// re-enter the archive as if a modality had sent them. "*" allows every
	// AE.
	SyntheticAEs []string
	// Source is the CloudEvents source of the events. Default
	// "pacsflow/ingest/<hostname>".
	Source string
	// Replica names this process among ingest replicas. Default hostname:pid.
	Replica string
	// Backend and Bucket describe the storage in events ("fs" or
	// "objectstore", and the object store bucket).
	Backend string
	Bucket  string
	// Stream configures the event stream.
	Stream events.StreamConfig
	// StudiesBucket and RegistryBucket are the KV buckets of the study
	// assembler and of the instance registry. KVReplicas applies to both.
	StudiesBucket  string
	RegistryBucket string
	KVReplicas     int
	// StudyRetention is how long study state is kept after its last change.
	// Default 30 days.
	StudyRetention time.Duration
	// QuietPeriod: a study is received when its associations have ended and
	// no instance came for this long. Default 2 s.
	QuietPeriod time.Duration
	// MaxWait: a study is reported this long after its first unreported
	// instance even if an association is still open. Default 10 min.
	MaxWait time.Duration
	// MinFreeBytes and MinFreeRatio: below min(MinFreeBytes, MinFreeRatio x
	// total) free storage, associations are refused and instances answered
	// A700. Defaults 5 GB and 10 %.
	MinFreeBytes int64
	MinFreeRatio float64
	// Space, if set, replaces the storage's own report of free space for
	// back-pressure: an object store on an embedded server cannot see the
	// disk under it, but the process that runs the server can.
	Space func(ctx context.Context) (storage.Space, error)
	// MaxInstanceBytes refuses larger instances with A700. 0: no limit.
	MaxInstanceBytes int64
	// MaxMetadataPrefix bounds how much of an instance is buffered to find
	// its identifying attributes before storing it. Default 4 MiB.
	MaxMetadataPrefix int
	Logger            *slog.Logger
	// Registerer receives the Prometheus metrics. Default: a new registry.
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	if c.Source == "" {
		c.Source = "pacsflow/ingest/" + host
	}
	if c.Replica == "" {
		c.Replica = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if c.StudiesBucket == "" {
		c.StudiesBucket = "pacsflow-studies"
	}
	if c.RegistryBucket == "" {
		c.RegistryBucket = "pacsflow-instance-registry"
	}
	if c.KVReplicas == 0 {
		c.KVReplicas = 1
	}
	if c.StudyRetention == 0 {
		c.StudyRetention = 30 * 24 * time.Hour
	}
	if c.QuietPeriod == 0 {
		c.QuietPeriod = 2 * time.Second
	}
	if c.MaxWait == 0 {
		c.MaxWait = 10 * time.Minute
	}
	if c.MinFreeBytes == 0 {
		c.MinFreeBytes = 5e9
	}
	if c.MinFreeRatio == 0 {
		c.MinFreeRatio = 0.10
	}
	if c.MaxMetadataPrefix == 0 {
		c.MaxMetadataPrefix = 4 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return c
}

// Service is the ingest service.
type Service struct {
	cfg     Config
	nc      *nats.Conn
	stream  jetstream.Stream // the event stream
	store   storage.Store
	pub     *events.Publisher
	reg     *registry
	asm     *assembler
	metrics *metrics
	log     *slog.Logger
	guard   *guard

	confirms chan confirmation
	// ended takes the association ends AssociationEnded could not record
	// to Run's retry loop.
	ended chan endedAssociation

	mu     sync.Mutex
	assocs map[string]map[string]int // association ID -> study UID -> events published
}

// New provisions the event stream and the KV buckets (idempotently) and
// returns the service. nc must have JetStream; store keeps the instances.
func New(ctx context.Context, cfg Config, nc *nats.Conn, store storage.Store) (*Service, error) {
	cfg = cfg.withDefaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	stream, err := events.Provision(ctx, js, cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	studies, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: cfg.StudiesBucket, Description: "ingest: study assembly state", History: 1,
		TTL: cfg.StudyRetention, Storage: jetstream.FileStorage, Replicas: cfg.KVReplicas,
	})
	if err != nil {
		return nil, fmt.Errorf("ingest: KV bucket %s: %w", cfg.StudiesBucket, err)
	}
	registryKV, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: cfg.RegistryBucket, Description: "ingest: stored versions per SOP Instance UID", History: 1,
		Storage: jetstream.FileStorage, Replicas: cfg.KVReplicas,
	})
	if err != nil {
		return nil, fmt.Errorf("ingest: KV bucket %s: %w", cfg.RegistryBucket, err)
	}
	m := newMetrics(cfg.Registerer)
	pub := events.NewPublisher(js, cfg.Source)
	s := &Service{
		cfg: cfg, nc: nc, stream: stream, store: store, pub: pub, metrics: m, log: cfg.Logger,
		reg:      &registry{kv: registryKV},
		confirms: make(chan confirmation, 1024),
		ended:    make(chan endedAssociation, 256),
		assocs:   map[string]map[string]int{},
		asm: &assembler{
			kv: studies, js: js, pub: pub, stream: cfg.Stream.StreamName(), quiet: cfg.QuietPeriod, maxWait: cfg.MaxWait,
			replica: cfg.Replica, log: cfg.Logger, metrics: m, now: time.Now,
		},
	}
	s.guard = &guard{s: s}
	return s, nil
}

// Run runs the study assembler and records confirmed versions until ctx
// ends.
func (s *Service) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.confirmLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		s.retryEnded(ctx)
	}()
	err := s.asm.run(ctx)
	cancel()
	wg.Wait()
	return err
}

// Authorizer wraps an access policy (nil admits everyone) with
// back-pressure: while storage is short of space or the broker is
// unreachable, associations get a transient A-ASSOCIATE-RJ.
func (s *Service) Authorizer(inner dimse.Authorizer) dimse.Authorizer {
	return authorizerFunc(func(ctx context.Context, p *dimse.Peer) ([]byte, error) {
		if err := s.guard.check(ctx); err != nil {
			s.metrics.rejected.WithLabelValues(reasonLabel(err)).Inc()
			return nil, &dimse.Rejection{
				RJ:     pdu.AssociateRJ{Result: pdu.RejectTransient, Source: pdu.RejectSourceProviderPresenta, Reason: pdu.RejectTemporaryCongestion},
				Reason: err.Error(),
			}
		}
		if inner == nil {
			return nil, nil
		}
		return inner.Authorize(ctx, p)
	})
}

type authorizerFunc func(ctx context.Context, p *dimse.Peer) ([]byte, error)

func (f authorizerFunc) Authorize(ctx context.Context, p *dimse.Peer) ([]byte, error) {
	return f(ctx, p)
}

// Ready reports whether the service can accept instances now.
func (s *Service) Ready(ctx context.Context) error { return s.guard.check(ctx) }

// AssociationEnded records, for the study assembler, how many instance
// events the association published per study. It is the
// dimse.ServerConfig.AssociationEnded hook.
func (s *Service) AssociationEnded(info *dimse.AssociationInfo, err error) {
	outcome := "released"
	if err != nil {
		outcome = "aborted"
	}
	s.metrics.associations.WithLabelValues(outcome).Inc()
	s.mu.Lock()
	perStudy := s.assocs[info.ID]
	delete(s.assocs, info.ID)
	s.mu.Unlock()
	if len(perStudy) == 0 {
		return
	}
	e := endedAssociation{id: info.ID, perStudy: perStudy}
	err = s.recordEnded(context.Background(), e)
	if err == nil {
		return
	}
	select {
	case s.ended <- e:
		s.log.Warn("could not record the end of the association; retrying", "assoc", info.ID, "err", err)
	default:
		s.log.Warn("could not record the end of the association; its studies are reported after the maximum wait",
			"assoc", info.ID, "err", err, "max_wait", s.cfg.MaxWait)
	}
}

// endedAssociation is what the study assembler learns of an association
// when it ends: how many instance events it published per study.
type endedAssociation struct {
	id       string
	perStudy map[string]int
}

func (s *Service) recordEnded(ctx context.Context, e endedAssociation) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.asm.associationEnded(ctx, e.id, e.perStudy)
}

// retryEnded records the association ends that failed (the broker was
// unreachable, a stream leader changed) with backoff, until the maximum
// wait would report their studies anyway or ctx ends. Recording is
// idempotent, so a retry of an end that did land changes nothing.
func (s *Service) retryEnded(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-s.ended:
			wg.Add(1)
			go func() {
				defer wg.Done()
				giveUp := time.Now().Add(s.cfg.MaxWait)
				for delay := time.Second; ; delay = min(2*delay, 30*time.Second) {
					sleep(ctx, delay)
					if ctx.Err() != nil {
						return
					}
					err := s.recordEnded(ctx, e)
					if err == nil {
						s.log.Info("recorded the end of the association", "assoc", e.id)
						return
					}
					if time.Now().After(giveUp) {
						s.log.Warn("gave up recording the end of the association; its studies are reported after the maximum wait", "assoc", e.id, "err", err)
						return
					}
				}
			}()
		}
	}
}

func (s *Service) countPublished(assoc, study string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.assocs[assoc]
	if m == nil {
		m = map[string]int{}
		s.assocs[assoc] = m
	}
	m[study]++
}

// guard caches the health checks behind back-pressure for a second, so
// that checking every association and instance costs nothing.
type guard struct {
	s       *Service
	mu      sync.Mutex
	checked time.Time
	err     error
}

var (
	errStorageLow  = errors.New("storage free space below the threshold")
	errBrokerDown  = errors.New("message broker unreachable")
	errStorageDown = errors.New("storage unavailable")
)

func reasonLabel(err error) string {
	switch {
	case errors.Is(err, errStorageLow):
		return "storage_low"
	case errors.Is(err, errBrokerDown):
		return "broker_down"
	}
	return "storage_down"
}

func (g *guard) check(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.checked) < time.Second {
		return g.err
	}
	g.err = g.probe(ctx)
	g.checked = time.Now()
	return g.err
}

func (g *guard) probe(ctx context.Context) error {
	if st := g.s.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("%w (connection %s)", errBrokerDown, st)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// A connected server is not enough on a cluster: while the event stream
	// elects a leader, no event can be acknowledged.
	info, err := g.s.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("%w: event stream: %w", errBrokerDown, err)
	}
	if info.Cluster != nil && info.Cluster.Leader == "" {
		return fmt.Errorf("%w: event stream %s has no leader", errBrokerDown, info.Config.Name)
	}
	space := g.s.store.Space
	if g.s.cfg.Space != nil {
		space = g.s.cfg.Space
	}
	sp, err := space(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", errStorageDown, err)
	}
	g.s.metrics.freeBytes.Set(float64(sp.Free))
	if sp.Free < 0 || sp.Total <= 0 {
		return nil
	}
	threshold := min(g.s.cfg.MinFreeBytes, int64(g.s.cfg.MinFreeRatio*float64(sp.Total)))
	if sp.Free < threshold {
		return fmt.Errorf("%w: %d bytes free, threshold %d", errStorageLow, sp.Free, threshold)
	}
	return nil
}

// invalidate makes the next check probe again, after a failure that may
// mean the state changed.
func (g *guard) invalidate() {
	g.mu.Lock()
	g.checked = time.Time{}
	g.mu.Unlock()
}
