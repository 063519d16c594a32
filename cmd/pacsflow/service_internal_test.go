package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestStartup: a start-up step is tried again while JetStream cannot
// answer, and a refusal ends it at once.
func TestStartup(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	calls := 0
	v, err := startup(t.Context(), log, "step", func(ctx context.Context) (int, error) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("an attempt without a deadline")
		}
		if calls++; calls < 3 {
			return 0, nats.ErrTimeout
		}
		return 42, nil
	})
	if v != 42 || err != nil || calls != 3 {
		t.Errorf("startup = %d, %v after %d calls; want 42, nil after 3", v, err, calls)
	}

	calls = 0
	_, err = startup(t.Context(), log, "step", func(context.Context) (int, error) {
		calls++
		return 0, jetstream.ErrStreamNameAlreadyInUse
	})
	if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) || calls != 1 {
		t.Errorf("a refused step: %v after %d calls; want the refusal after 1", err, calls)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	_, err = startup(ctx, log, "step", func(context.Context) (int, error) { return 0, nats.ErrNoResponders })
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("a step that never succeeds, its context ended: %v, want its last error", err)
	}
}

// TestSupervise: a component that fails is started again until the
// context ends.
func TestSupervise(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	runs := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		supervise(ctx, slog.New(slog.DiscardHandler), "component", func(context.Context) error {
			if runs++; runs == 2 {
				cancel()
				<-ctx.Done()
				return nil
			}
			return errors.New("consumer: no leader")
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("supervise did not return after its context ended")
	}
	if runs != 2 {
		t.Errorf("%d runs, want 2 (the failed one started again)", runs)
	}
}
