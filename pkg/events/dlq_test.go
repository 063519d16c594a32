package events

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestDeadLettersOfStoppedConsumer: a service creates its consumer and
// stops; its messages are delivered to a client that never settles them
// (as a service that crashes on each) until they run out of deliveries.
// Only the reconciler runs: it records their dead letters from JetStream's
// advisories, once, even when it reads the advisories again after the
// duplicate window.
func TestDeadLettersOfStoppedConsumer(t *testing.T) {
	streams := StreamConfig{DeadLetters: DeadLetterLimits{Duplicates: 100 * time.Millisecond}}
	js := provisioned(t, streams)
	cfg := ConsumerConfig{Durable: "reporter", MaxDeliver: 2, AckWait: 300 * time.Millisecond}
	stop := consume(t, js, cfg, func(context.Context, *Delivery) error { return nil })
	waitFor(t, "the consumer", func() bool {
		_, err := js.Consumer(testContext(t), "PACSFLOW", "reporter")
		return err == nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	ids := publish(t, js, "CT", 2)
	cons, err := js.Consumer(testContext(t), "PACSFLOW", "reporter")
	if err != nil {
		t.Fatal(err)
	}
	adv, err := js.Stream(testContext(t), "PACSFLOW_ADVISORIES")
	if err != nil {
		t.Fatal(err)
	}
	// Pull as a service that crashes on every message would, until
	// JetStream has given up on both: it says so when it would deliver
	// them again, at a pull after the last delivery's AckWait.
	deadline := time.Now().Add(testTimeout)
	for {
		info, err := adv.Info(testContext(t))
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d advisories after %s, want 2", info.State.Msgs, testTimeout)
		}
		batch, err := cons.Fetch(2, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			if meta, err := m.Metadata(); err != nil || meta.NumDelivered > 2 {
				t.Fatalf("delivered beyond MaxDeliver: %+v %v", meta, err)
			}
		}
	}
	if n := len(deadLetters(t, js, "reporter")); n != 0 {
		t.Fatalf("%d dead letters before the reconciler ran", n)
	}

	stop = run(t, func(ctx context.Context) error {
		return RunDeadLetterReconciler(ctx, js, ReconcilerConfig{Streams: streams})
	})
	waitFor(t, "two dead letters", func() bool { return len(deadLetters(t, js, "reporter")) == 2 })
	for i, d := range deadLetters(t, js, "reporter") {
		if d.Header.Get(HeaderID) != ids[i] || d.StreamSeq != uint64(i+1) || d.Deliveries != 2 || d.Consumer != "reporter" ||
			d.Subject != "pacs.instance.stored.CT.AE" || d.Error != "delivered 2 times without being acknowledged (MaxDeliver)" ||
			!strings.Contains(string(d.Data), "sop_instance_uid") {
			t.Errorf("dead letter %d: %+v", i, d)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Past the duplicate window, a reconciler reading the same advisories
	// finds the dead letters by their subjects.
	time.Sleep(2 * streams.DeadLetters.Duplicates)
	if err := js.DeleteConsumer(testContext(t), "PACSFLOW_ADVISORIES", "pacsflow-dlq-reconciler"); err != nil {
		t.Fatal(err)
	}
	run(t, func(ctx context.Context) error {
		return RunDeadLetterReconciler(ctx, js, ReconcilerConfig{Streams: streams})
	})
	waitFor(t, "the advisories read again", func() bool {
		c, err := js.Consumer(testContext(t), "PACSFLOW_ADVISORIES", "pacsflow-dlq-reconciler")
		return err == nil && c.CachedInfo().AckFloor.Stream == 2 && c.CachedInfo().NumAckPending == 0
	})
	if n := len(deadLetters(t, js, "")); n != 2 {
		t.Errorf("%d dead letters after reading the advisories again, want 2", n)
	}
}

// TestDeadLetterOfTerminatedMessage: a message terminated by a client that
// does not record dead letters, with a reason, and one deleted from the
// stream while pending.
func TestDeadLetterOfTerminatedMessage(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	publish(t, js, "SR", 2)
	cons, err := js.CreateConsumer(testContext(t), "PACSFLOW", jetstream.ConsumerConfig{Durable: "legacy", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(testTimeout))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 2 {
		t.Fatalf("fetched %d messages: %v", len(msgs), batch.Error())
	}
	if err := msgs[0].TermWithReason("unknown SOP class"); err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(testContext(t), "PACSFLOW")
	if err := st.DeleteMsg(testContext(t), 2); err != nil {
		t.Fatal(err)
	}
	run(t, func(ctx context.Context) error { return RunDeadLetterReconciler(ctx, js, ReconcilerConfig{}) })
	waitFor(t, "two dead letters", func() bool { return len(deadLetters(t, js, "legacy")) == 2 })
	dl := deadLetters(t, js, "legacy")
	if d := dl[0]; d.Error != "unknown SOP class" || d.Deliveries != 1 || d.Subject == "" || d.StreamSeq != 1 {
		t.Errorf("dead letter of the terminated message: %+v", d)
	}
	// JetStream terminates a pending message that is deleted, with its
	// own reason.
	if d := dl[1]; d.Error != "Unacknowledged message was deleted; the message is no longer in PACSFLOW" || d.Subject != "" || len(d.Data) != 0 || d.StreamSeq != 2 {
		t.Errorf("dead letter of the deleted message: %+v", d)
	}
	if _, err := ReplayDeadLetter(testContext(t), js, StreamConfig{}, dl[1], false); err == nil {
		t.Error("a dead letter without its original was replayed")
	}
}

func TestReplayDeadLetter(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	consume(t, js, ConsumerConfig{Durable: "router"}, func(context.Context, *Delivery) error { return Poison(nil) })
	ids := publish(t, js, "CT", 1)
	waitFor(t, "the dead letter", func() bool { return len(deadLetters(t, js, "router")) == 1 })
	d := deadLetters(t, js, "router")[0]

	dup, err := ReplayDeadLetter(testContext(t), js, StreamConfig{}, d, false)
	if err != nil || dup {
		t.Fatalf("replay: duplicate %v, %v", dup, err)
	}
	st, _ := js.Stream(testContext(t), "PACSFLOW")
	m, err := st.GetMsg(testContext(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "pacs.instance.stored.CT.AE" || m.Header.Get(HeaderID) != ids[0] || m.Header.Get(nats.MsgIdHdr) != ids[0]+"/replay/"+strconv.FormatUint(d.Seq, 10) {
		t.Errorf("replayed message %s %v", m.Subject, m.Header)
	}
	for k := range m.Header {
		if strings.HasPrefix(k, "Pacsflow-Dlq-") {
			t.Errorf("replayed message has header %s", k)
		}
	}
	if _, err := Decode(m.Subject, m.Header, m.Data); err != nil {
		t.Errorf("replayed event: %v", err)
	}
	// Replayed again within the duplicate window: stored once.
	if dup, err := ReplayDeadLetter(testContext(t), js, StreamConfig{}, d, true); err != nil || !dup {
		t.Fatalf("second replay: duplicate %v, %v", dup, err)
	}
	// The replayed event, poison again, is dead-lettered in turn; the
	// first dead letter is purged.
	waitFor(t, "only the dead letter of the replayed event", func() bool {
		dl := deadLetters(t, js, "router")
		return len(dl) == 1 && dl[0].StreamSeq == 2
	})
}

func TestHeaderValue(t *testing.T) {
	if got := headerValue("a\r\nb\tc  d"); got != "a b c d" {
		t.Errorf("headerValue: %q", got)
	}
	long := strings.Repeat("é", maxErrorLen)
	if got := headerValue(long); len(got) > maxErrorLen+len("…") || !strings.HasSuffix(got, "…") || !strings.HasPrefix(got, "éé") {
		t.Errorf("long value cut to %d bytes", len(got))
	}
	if got := slices.Collect(strings.SplitSeq(DeadLetterSubject("c", 42), ".")); !slices.Equal(got, []string{"dlq", "c", "42"}) {
		t.Errorf("dead letter subject %v", got)
	}
}
