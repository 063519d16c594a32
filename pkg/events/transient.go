package events

import (
	"context"
	"errors"
	"net"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream API error codes (nats-server's errors.json) of a cluster that
// cannot serve a request for now.
const (
	errCodeClusterNoPeers        = 10005 // no suitable peers for placement
	errCodeClusterNotAvailable   = 10008 // JetStream system temporarily unavailable
	errCodeInsufficientResources = 10023 // insufficient resources
	errCodeLastSeqNotReady       = 10163 // expected last sequence per subject temporarily unavailable
)

// Transient reports whether err says that JetStream could not serve a
// request for now, rather than that it refused it: no answer in time, no
// responders, a server still starting, a cluster electing a leader or
// short of the peers a replicated stream needs. Trying again later can
// succeed; start-up waits through such errors (a pod that starts before
// its NATS cluster has formed, a node restarting) instead of exiting.
func Transient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case errCodeClusterNoPeers, errCodeClusterNotAvailable, errCodeInsufficientResources, errCodeLastSeqNotReady,
			jetstream.JSErrCodeJetStreamNotEnabled:
			return true
		}
		return false
	}
	for _, target := range []error{
		context.DeadlineExceeded, nats.ErrTimeout, nats.ErrNoResponders, nats.ErrDisconnected,
		nats.ErrConnectionReconnecting, jetstream.ErrNoStreamResponse,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}
