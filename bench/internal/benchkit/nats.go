package benchkit

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
)

// NATS is an embedded NATS JetStream server, this process's connection to it
// and the object store in it.
type NATS struct {
	Server *natsserver.Server
	Conn   *nats.Conn
	JS     jetstream.JetStream
	Store  *objstore.Store
}

// StartNATS starts a server that stores in storeDir, connects to it with the
// connection name name and opens the object store. Close stops it.
func StartNATS(ctx context.Context, storeDir, name string) (n *NATS, err error) {
	n = &NATS{}
	if n.Server, err = natsserver.Start(natsserver.Config{StoreDir: storeDir}); err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if n.Conn, err = n.Server.Connect(nats.Name(name)); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if n.JS, err = jetstream.New(n.Conn); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if n.Store, err = objstore.New(ctx, n.JS, objstore.Config{}); err != nil {
		return nil, fmt.Errorf("object store: %w", err)
	}
	return n, nil
}

// Close closes the connection and shuts the server down.
func (n *NATS) Close() {
	if n.Conn != nil {
		n.Conn.Close()
	}
	n.Server.Shutdown()
}

// FreshStream deletes and provisions the events stream, so that no event,
// consumer or duplicate-detection state of an earlier run remains.
func FreshStream(ctx context.Context, js jetstream.JetStream) error {
	name := events.StreamConfig{}.StreamName()
	if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete stream %s: %w", name, err)
	}
	if _, err := events.Provision(ctx, js, events.StreamConfig{}); err != nil {
		return fmt.Errorf("provision the streams: %w", err)
	}
	return nil
}

// StoredEvents is how many events on subjects subjectFilter ("ai.triage.>")
// the events stream holds.
func StoredEvents(ctx context.Context, js jetstream.JetStream, subjectFilter string) (uint64, error) {
	st, err := js.Stream(ctx, events.StreamConfig{}.StreamName())
	if err != nil {
		return 0, fmt.Errorf("events stream: %w", err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subjectFilter))
	if err != nil {
		return 0, fmt.Errorf("events stream: %w", err)
	}
	var stored uint64
	for _, c := range info.State.Subjects {
		stored += c
	}
	return stored, nil
}
