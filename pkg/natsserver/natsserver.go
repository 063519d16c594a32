// Package natsserver runs a NATS server with JetStream inside the process:
// the single-machine default of pacsflow, and the broker of its tests.
package natsserver

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Config configures an embedded server.
type Config struct {
	// StoreDir holds the JetStream file store. Required.
	StoreDir string
	// Listen is where the server accepts clients, HOST:PORT. Empty means no
	// network listener: only in-process connections (see Server.Connect).
	// Port 0 picks a free port.
	Listen string
	// MaxPayload is the largest message accepted. Default 8 MiB, so that
	// study manifests and object store chunks fit.
	MaxPayload int32
	// SyncInterval is how often JetStream fsyncs its files; 0 keeps the
	// server's default (2 minutes), -1 means fsync on every write ("always").
	SyncInterval time.Duration
	// MaxStore caps JetStream file storage in bytes; 0 lets the server
	// derive it from the free disk space.
	MaxStore int64
	// Logging sends the server's own log lines to its default logger.
	Logging bool
}

// Server is a running embedded NATS server.
type Server struct {
	s *server.Server
}

// Start starts the server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("natsserver: StoreDir is required")
	}
	opts := &server.Options{
		ServerName:         "pacsflow",
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		JetStreamMaxStore:  cfg.MaxStore,
		MaxPayload:         cfg.MaxPayload,
		NoSigs:             true,
		NoLog:              !cfg.Logging,
		DontListen:         cfg.Listen == "",
		JetStreamMaxMemory: 64 << 20,
	}
	if opts.MaxPayload == 0 {
		opts.MaxPayload = 8 << 20
	}
	switch {
	case cfg.SyncInterval < 0:
		opts.SyncAlways = true
	case cfg.SyncInterval > 0:
		opts.SyncInterval = cfg.SyncInterval
	}
	if cfg.Listen != "" {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("natsserver: listen address %q: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("natsserver: listen port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsserver: %w", err)
	}
	if cfg.Logging {
		s.ConfigureLogger()
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, errors.New("natsserver: not ready for connections within 30s")
	}
	return &Server{s: s}, nil
}

// ClientURL is the URL clients connect to; empty without a listener.
func (s *Server) ClientURL() string {
	if s.s.Addr() == nil {
		return ""
	}
	return s.s.ClientURL()
}

// Connect opens an in-process client connection (no TCP) with opts added.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.InProcessServer(s.s), nats.Name("pacsflow-in-process")}, opts...)
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("natsserver: connect in process: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server and waits for it to finish, flushing JetStream.
func (s *Server) Shutdown() {
	s.s.Shutdown()
	s.s.WaitForShutdown()
}
