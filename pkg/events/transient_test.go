package events

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestTransient(t *testing.T) {
	apiErr := func(code jetstream.ErrorCode) error {
		return fmt.Errorf("create stream: %w", &jetstream.APIError{ErrorCode: code, Code: 503})
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"deadline", fmt.Errorf("provision: %w", context.DeadlineExceeded), true},
		{"request timeout", nats.ErrTimeout, true},
		{"no responders", nats.ErrNoResponders, true},
		{"JetStream not enabled (server starting)", jetstream.ErrJetStreamNotEnabled, true},
		{"no leader", apiErr(errCodeClusterNotAvailable), true},
		{"no peers for R3", apiErr(errCodeClusterNoPeers), true},
		{"insufficient resources", apiErr(errCodeInsufficientResources), true},
		{"stream not found", jetstream.ErrStreamNotFound, false},
		{"bad request", apiErr(jetstream.JSErrCodeBadRequest), false},
		{"name in use", jetstream.ErrStreamNameAlreadyInUse, false},
		{"cancelled", context.Canceled, false},
		{"connection closed", nats.ErrConnectionClosed, false},
		{"other", errors.New("invalid subject"), false},
	} {
		if got := Transient(tc.err); got != tc.want {
			t.Errorf("%s: Transient(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
