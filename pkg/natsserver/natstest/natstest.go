// Package natstest runs an embedded NATS server with JetStream for a test
// or benchmark, stopped when it ends.
package natstest

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/natsserver"
)

// Server is a running embedded server and a connection to it.
type Server struct {
	*natsserver.Server
	Conn *nats.Conn
	JS   jetstream.JetStream
}

// Start starts a server configured by cfg, storing in a temporary folder
// of tb unless cfg.StoreDir is set, and connects to it. The connection
// closes and the server shuts down when tb ends.
func Start(tb testing.TB, cfg natsserver.Config) *Server {
	tb.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = tb.TempDir()
	}
	s, err := natsserver.Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Shutdown)
	nc, err := s.Connect()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return &Server{Server: s, Conn: nc, JS: js}
}

// Messages returns the messages of stream whose subject starts with prefix
// ("" for all), in order, headers and all.
func Messages(tb testing.TB, js jetstream.JetStream, stream, prefix string) []*jetstream.RawStreamMsg {
	tb.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		tb.Fatalf("stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // removed by the stream's limits
		}
		if err != nil {
			tb.Fatalf("stream %s sequence %d: %v", stream, seq, err)
		}
		if strings.HasPrefix(m.Subject, prefix) {
			out = append(out, m)
		}
	}
	return out
}
