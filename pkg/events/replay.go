package events

// Replay: reading a stream from a sequence or a time.
//
// ReplayFrom reads with an ordered consumer: ephemeral, unacknowledged,
// resumed by the client after any gap. It suits tools (pacsflow events
// tail, pacsflow dlq list) and one-off analyses that keep their own
// position. A downstream service that must not miss events across its
// restarts uses a durable consumer instead: Consume with StartSeq or
// StartTime, which apply when the consumer is created. docs/consuming.md
// shows both, and the nats CLI equivalents.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ReplayConfig says what ReplayFrom reads.
type ReplayConfig struct {
	// Stream is read. Default "PACSFLOW".
	Stream string
	// FilterSubjects selects the messages. Default: all of them.
	FilterSubjects []string
	// StartSeq or StartTime is the first message read: the first at or
	// after that stream sequence, or stored at or after that time. At most
	// one of them; default: the oldest the stream keeps.
	StartSeq  uint64
	StartTime time.Time
	// Follow keeps reading new messages until ctx ends. Without it,
	// ReplayFrom returns once it has read the last message there was when
	// it got there.
	Follow bool
}

// Stored is a message as a stream keeps it.
type Stored struct {
	// Seq is its sequence in the stream, Time when the stream stored it.
	Seq     uint64
	Time    time.Time
	Subject string
	Header  nats.Header
	Data    []byte
}

// Event decodes the stored message as an event.
func (s *Stored) Event() (*Received, error) { return Decode(s.Subject, s.Header, s.Data) }

// ReplayFrom calls fn with each message cfg selects, in stream order. It
// returns fn's first error; nil at the end of the stream, or, with Follow,
// when ctx ends; ctx's error when it ends before the end without Follow.
func ReplayFrom(ctx context.Context, js jetstream.JetStream, cfg ReplayConfig, fn func(*Stored) error) error {
	if cfg.Stream == "" {
		cfg.Stream = StreamConfig{}.withDefaults().Name
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: cfg.FilterSubjects}
	switch {
	case cfg.StartSeq != 0 && !cfg.StartTime.IsZero():
		return errors.New("replay: StartSeq and StartTime are exclusive")
	case cfg.StartSeq != 0:
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, cfg.StartSeq
	case !cfg.StartTime.IsZero():
		t := cfg.StartTime
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	cons, err := js.OrderedConsumer(ctx, cfg.Stream, occ)
	if err != nil {
		return fmt.Errorf("replay %s: %w", cfg.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("replay %s: %w", cfg.Stream, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	// The ordered consumer counts what is left from its start when it is
	// created, and each message what is left after it.
	if info := cons.CachedInfo(); !cfg.Follow && info != nil && info.NumPending == 0 {
		return nil
	}
	for {
		m, err := it.Next()
		switch {
		case errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil:
			if cfg.Follow {
				return nil
			}
			return ctx.Err()
		case err != nil:
			return fmt.Errorf("replay %s: %w", cfg.Stream, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("replay %s: %w", cfg.Stream, err)
		}
		if err := fn(&Stored{Seq: meta.Sequence.Stream, Time: meta.Timestamp, Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}); err != nil {
			return err
		}
		if !cfg.Follow && meta.NumPending == 0 {
			return nil
		}
	}
}
