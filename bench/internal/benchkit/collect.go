package benchkit

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/pacsflow/pacsflow/pkg/events"
)

// Arrival is an event as this process received it.
type Arrival struct {
	At      time.Time
	Rcv     *events.Received
	Err     error // the event did not decode
	Subject string
}

// Collector receives events on core NATS subscriptions: the time a
// subscriber sees them.
type Collector struct {
	C    <-chan Arrival
	subs []*nats.Subscription
	lost atomic.Int64
}

// Collect subscribes nc to subjects ("ai.triage.>"), buffering up to buffer
// events in C.
func Collect(nc *nats.Conn, buffer int, subjects ...string) (*Collector, error) {
	ch := make(chan Arrival, buffer)
	c := &Collector{C: ch}
	h := func(m *nats.Msg) {
		a := Arrival{At: time.Now(), Subject: m.Subject}
		a.Rcv, a.Err = events.Decode(m.Subject, m.Header, m.Data)
		select {
		case ch <- a:
		default:
			// Never block the connection's delivery: an unexpected flood is
			// counted and fails the run instead.
			c.lost.Add(1)
		}
	}
	for _, subj := range subjects {
		s, err := nc.Subscribe(subj, h)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("subscribe %s: %w", subj, err)
		}
		c.subs = append(c.subs, s)
	}
	if err := nc.Flush(); err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribe %s: %w", strings.Join(subjects, ", "), err)
	}
	return c, nil
}

// Lost is how many events did not fit the buffer: a run with any fails.
func (c *Collector) Lost() int64 { return c.lost.Load() }

// Close unsubscribes.
func (c *Collector) Close() {
	for _, s := range c.subs {
		_ = s.Unsubscribe()
	}
}
