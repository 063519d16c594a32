package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/pacsflow/pacsflow/internal/syncbuf"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
)

// waitFor polls cond until it holds, failing the test after testTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", testTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run runs fn (Consume or the reconciler) until the returned stop is called
// (or the test ends), and stop returns fn's error.
func run(t *testing.T, fn func(context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(testTimeout):
				t.Errorf("not stopped within %s", testTimeout)
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func consume(t *testing.T, js jetstream.JetStream, cfg ConsumerConfig, h Handler) (stop func() error) {
	t.Helper()
	return run(t, func(ctx context.Context) error { return Consume(ctx, js, cfg, h) })
}

// recorder is a handler that records its deliveries and returns what
// result says.
type recorder struct {
	mu     sync.Mutex
	got    []*Delivery
	at     []time.Time
	result func(*Delivery) error
}

func (r *recorder) handle(_ context.Context, d *Delivery) error {
	r.mu.Lock()
	r.got = append(r.got, d)
	r.at = append(r.at, time.Now())
	r.mu.Unlock()
	if r.result == nil {
		return nil
	}
	return r.result(d)
}

func (r *recorder) deliveries() []*Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Delivery(nil), r.got...)
}

func consumerInfo(t *testing.T, js jetstream.JetStream, stream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(testContext(t), stream, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// settled reports whether the consumer has delivered and settled every
// message of the stream up to seq.
func settled(t *testing.T, js jetstream.JetStream, name string, seq uint64) func() bool {
	return func() bool {
		c, err := js.Consumer(testContext(t), "PACSFLOW", name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return false // Consume has not created it yet
		}
		if err != nil {
			t.Fatal(err)
		}
		info := c.CachedInfo()
		return info.AckFloor.Stream >= seq && info.NumAckPending == 0
	}
}

func deadLetters(t *testing.T, js jetstream.JetStream, consumer string) []*DeadLetter {
	t.Helper()
	var out []*DeadLetter
	if err := ListDeadLetters(testContext(t), js, StreamConfig{}, consumer, func(d *DeadLetter) error {
		out = append(out, d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestConsumeAcksOnce(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	ids := publish(t, js, "CT", 3)
	var r recorder
	consume(t, js, ConsumerConfig{Durable: "indexer", FilterSubjects: []string{"pacs.instance.stored.>"}, Concurrency: 2}, r.handle)
	waitFor(t, "three events handled and acknowledged", settled(t, js, "indexer", 3))
	got := r.deliveries()
	if len(got) != 3 {
		t.Fatalf("%d deliveries, want 3", len(got))
	}
	seen := map[string]bool{}
	for _, d := range got {
		if d.Deliveries != 1 || d.Header.Get(HeaderID) != d.Event.ID || d.Event.Type != TypeInstanceStored {
			t.Errorf("delivery %+v of %+v", d, d.Event)
		}
		seen[d.Event.ID] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Errorf("event %s not handled", id)
		}
	}
	if info := consumerInfo(t, js, "PACSFLOW", "indexer"); info.Delivered.Consumer != 3 || info.NumRedelivered != 0 {
		t.Errorf("consumer delivered %d messages (%d redelivered), want 3 once each", info.Delivered.Consumer, info.NumRedelivered)
	}
	if dl := deadLetters(t, js, ""); len(dl) != 0 {
		t.Errorf("%d dead letters", len(dl))
	}
}

func TestConsumeRetriesThenDeadLetters(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	// The reconciler runs too: the terminated advisory must not record the
	// dead letter a second time.
	run(t, func(ctx context.Context) error { return RunDeadLetterReconciler(ctx, js, ReconcilerConfig{}) })
	backoff := []time.Duration{50 * time.Millisecond, 200 * time.Millisecond}
	r := recorder{result: func(*Delivery) error { return errors.New("render thumbnail:\nstorage unavailable") }}
	consume(t, js, ConsumerConfig{Durable: "thumbnailer", MaxDeliver: 3, Backoff: backoff}, r.handle)
	ids := publish(t, js, "CT", 1)

	waitFor(t, "the dead letter", func() bool { return len(deadLetters(t, js, "thumbnailer")) == 1 })
	got := r.deliveries()
	if len(got) != 3 {
		t.Fatalf("%d deliveries, want 3", len(got))
	}
	for i, d := range got {
		if d.Deliveries != i+1 || d.Event.ID != ids[0] {
			t.Errorf("delivery %d: count %d of %s", i+1, d.Deliveries, d.Event.ID)
		}
	}
	for i, b := range backoff {
		if gap := r.at[i+1].Sub(r.at[i]); gap < b {
			t.Errorf("delivery %d came %s after the previous one; backoff %s", i+2, gap, b)
		}
	}
	d := deadLetters(t, js, "thumbnailer")[0]
	if d.Consumer != "thumbnailer" || d.Deliveries != 3 || d.Stream != "PACSFLOW" || d.StreamSeq != 1 ||
		d.Subject != "pacs.instance.stored.CT.AE" || d.Error != "render thumbnail: storage unavailable" ||
		time.Since(d.Time) > testTimeout || d.Header.Get(HeaderID) != ids[0] || d.Header.Get(HeaderType) != TypeInstanceStored {
		t.Errorf("dead letter %+v", d)
	}
	if !strings.Contains(string(d.Data), `"sop_instance_uid":"1.2.3.0"`) {
		t.Errorf("dead letter data %s", d.Data)
	}
	raw, err := GetDeadLetter(testContext(t), js, StreamConfig{}, d.Seq)
	if err != nil || raw.Consumer != "thumbnailer" {
		t.Fatalf("dead letter %d: %+v %v", d.Seq, raw, err)
	}
	st, _ := js.Stream(testContext(t), "PACSFLOW_DLQ")
	m, err := st.GetMsg(testContext(t), d.Seq)
	if err != nil || m.Subject != "dlq.thumbnailer.1" || m.Header.Get("Nats-Msg-Id") != "dlq/thumbnailer/1" {
		t.Fatalf("dead letter message %+v %v", m, err)
	}
	waitFor(t, "the message terminated", settled(t, js, "thumbnailer", 1))
	// The reconciler has read the terminated advisory and found the dead
	// letter recorded.
	waitFor(t, "the reconciler to read the advisory", func() bool {
		info := consumerInfo(t, js, "PACSFLOW_ADVISORIES", "pacsflow-dlq-reconciler")
		return info.AckFloor.Stream >= 1 && info.NumAckPending == 0 && info.NumPending == 0
	})
	if n := len(deadLetters(t, js, "")); n != 1 {
		t.Errorf("%d dead letters, want 1", n)
	}
}

func TestConsumePoison(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	r := recorder{result: func(*Delivery) error { return Poison(errors.New("no study UID")) }}
	consume(t, js, ConsumerConfig{Durable: "router"}, r.handle)
	publish(t, js, "CT", 1)
	// Not a CloudEvent: the handler never sees it.
	if _, err := js.Publish(testContext(t), "pacs.instance.stored.CT.AE", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two dead letters", func() bool { return len(deadLetters(t, js, "router")) == 2 })
	if got := r.deliveries(); len(got) != 1 {
		t.Errorf("the handler got %d deliveries, want 1", len(got))
	}
	dl := deadLetters(t, js, "router")
	if d := dl[0]; d.Deliveries != 1 || d.Error != "poison message: no study UID" || d.StreamSeq != 1 {
		t.Errorf("dead letter of the poison event: %+v", d)
	}
	if d := dl[1]; d.Deliveries != 1 || !strings.Contains(d.Error, "not a CloudEvents") || string(d.Data) != "garbage" || d.StreamSeq != 2 {
		t.Errorf("dead letter of the message that is not an event: %+v", d)
	}
	waitFor(t, "both messages terminated", settled(t, js, "router", 2))
}

func TestConsumeKeepsMessageWhenDeadLetterFails(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	if err := js.DeleteStream(testContext(t), "PACSFLOW_DLQ"); err != nil {
		t.Fatal(err)
	}
	r := recorder{result: func(*Delivery) error { return Poison(errors.New("unsupported transfer syntax")) }}
	stop := consume(t, js, ConsumerConfig{Durable: "transcoder", MaxDeliver: 2, Backoff: []time.Duration{50 * time.Millisecond}}, r.handle)
	ids := publish(t, js, "MR", 1)
	// Not terminated, not acknowledged: delivered again, until JetStream
	// gives up and says so in an advisory.
	waitFor(t, "a second delivery", func() bool { return len(r.deliveries()) == 2 })
	st, err := js.Stream(testContext(t), "PACSFLOW_ADVISORIES")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the max-deliveries advisory", func() bool {
		info, err := st.Info(testContext(t))
		return err == nil && info.State.Msgs == 1
	})
	adv, err := st.GetMsg(testContext(t), 1)
	if err != nil || adv.Subject != "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PACSFLOW.transcoder" {
		t.Fatalf("advisory %+v %v", adv, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// With the dead-letter stream back, the reconciler records it.
	if _, err := Provision(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	run(t, func(ctx context.Context) error { return RunDeadLetterReconciler(ctx, js, ReconcilerConfig{}) })
	waitFor(t, "the dead letter", func() bool { return len(deadLetters(t, js, "transcoder")) == 1 })
	d := deadLetters(t, js, "transcoder")[0]
	if d.Header.Get(HeaderID) != ids[0] || d.Deliveries != 2 || !strings.Contains(d.Error, "delivered 2 times") {
		t.Errorf("dead letter %+v", d)
	}
}

func TestConsumeInProgress(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	r := recorder{result: func(*Delivery) error {
		time.Sleep(3 * time.Second) // slow work, three times AckWait
		return nil
	}}
	consume(t, js, ConsumerConfig{Durable: "archiver", AckWait: time.Second}, r.handle)
	// The second waits for the handler, pulled already: it is kept alive
	// too.
	publish(t, js, "CT", 2)
	waitFor(t, "the slow events acknowledged", settled(t, js, "archiver", 2))
	if info := consumerInfo(t, js, "PACSFLOW", "archiver"); info.Delivered.Consumer != 2 {
		t.Errorf("2 slow events were delivered %d times, want once each", info.Delivered.Consumer)
	}
	if n := len(r.deliveries()); n != 2 {
		t.Errorf("the handler ran %d times, want twice", n)
	}
}

func TestConsumeConfigAndShutdown(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	publish(t, js, "CT", 3)
	if err := Consume(testContext(t), js, ConsumerConfig{}, nil); err == nil {
		t.Fatal("Consume without a durable name started")
	}
	// A new consumer starts at StartSeq.
	var r recorder
	stop := consume(t, js, ConsumerConfig{Durable: "analytics", StartSeq: 3, MaxDeliver: 4}, r.handle)
	waitFor(t, "the third event", settled(t, js, "analytics", 3))
	if got := r.deliveries(); len(got) != 1 || got[0].StreamSeq != 3 {
		t.Fatalf("deliveries %+v; want only sequence 3", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Started again with another start and other limits: the limits
	// change, the position stays.
	release := make(chan struct{})
	started := make(chan struct{})
	finished := false
	h := func(ctx context.Context, d *Delivery) error {
		close(started)
		<-ctx.Done()
		<-release
		finished = true
		return nil
	}
	stop = consume(t, js, ConsumerConfig{Durable: "analytics", StartSeq: 1, MaxDeliver: 7, AckWait: 10 * time.Second}, h)
	waitFor(t, "the consumer updated", func() bool {
		c, err := js.Consumer(testContext(t), "PACSFLOW", "analytics")
		return err == nil && c.CachedInfo().Config.MaxDeliver == 7
	})
	info := consumerInfo(t, js, "PACSFLOW", "analytics")
	if info.Config.AckWait != 10*time.Second || info.Config.OptStartSeq != 3 {
		t.Errorf("consumer config after update: %+v", info.Config)
	}
	publish(t, js, "CT", 1)
	<-started
	// Stopping waits for the running handler.
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if !finished {
		t.Fatal("Consume returned before its handler finished")
	}
	waitFor(t, "the event acknowledged", settled(t, js, "analytics", 4))
}

// A downstream service's worker: a durable consumer of the received
// studies, which starts a day back when it is first created and resumes
// where it stopped afterwards.
func ExampleConsume() {
	js, stop := exampleJetStream()
	defer stop()

	ctx, cancel := context.WithCancel(context.Background())
	handled := 0
	err := Consume(ctx, js, ConsumerConfig{
		Durable:        "study-stats",
		FilterSubjects: []string{SubjectStudyReceived + ".>"},
		StartTime:      time.Now().Add(-24 * time.Hour),
	}, func(ctx context.Context, d *Delivery) error {
		var study StudyReceived
		if err := json.Unmarshal(d.Event.Data, &study); err != nil {
			return Poison(err) // retrying cannot fix it: dead-letter it
		}
		fmt.Println(d.Event.Subject, study.NumInstances, "instances")
		if handled++; handled == 3 {
			cancel() // an example stops; a service runs until it is told to
		}
		return nil // done: acknowledge
	})
	fmt.Println("stopped:", err)
	// Output:
	// 1.2.1 10 instances
	// 1.2.2 20 instances
	// 1.2.3 30 instances
	// stopped: <nil>
}

// TestConsumeWaitsForJetStream: a consumer started while its server is
// down (a service that starts before its NATS, a node restarting) waits,
// and consumes once the server is back, rather than fail.
func TestConsumeWaitsForJetStream(t *testing.T) {
	dir := t.TempDir()
	srv, err := natsserver.Start(natsserver.Config{StoreDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	url := srv.ClientURL()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Provision(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()

	var logs syncbuf.Buffer
	var r recorder
	consume(t, js, ConsumerConfig{Durable: "late", FilterSubjects: []string{"pacs.instance.stored.>"},
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, r.handle)
	waitFor(t, "the consumer to wait for JetStream", func() bool { return strings.Contains(logs.String(), "JetStream not ready") })

	srv, err = natsserver.Start(natsserver.Config{StoreDir: dir, Listen: strings.TrimPrefix(url, "nats://")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	ids := publish(t, js, "CT", 1)
	waitFor(t, "the event handled", func() bool { return len(r.deliveries()) == 1 })
	if got := r.deliveries()[0].Event.ID; got != ids[0] {
		t.Errorf("handled %s, want %s", got, ids[0])
	}
}
