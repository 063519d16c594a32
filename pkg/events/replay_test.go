package events

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/natsserver"
)

// testTimeout bounds every wait of these tests; generous, so that a slow
// machine only makes them slower.
const testTimeout = time.Minute

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// provisioned starts an embedded server with the streams provisioned.
func provisioned(t *testing.T, cfg StreamConfig) jetstream.JetStream {
	t.Helper()
	js := startServer(t)
	if _, err := Provision(testContext(t), js, cfg); err != nil {
		t.Fatal(err)
	}
	return js
}

// publish publishes n instance events on pacs.instance.stored.<modality>.AE
// and returns their IDs.
func publish(t *testing.T, js jetstream.JetStream, modality string, n int) []string {
	t.Helper()
	p := NewPublisher(js, "test")
	var ids []string
	for i := range n {
		e := &Event{
			ID: fmt.Sprintf("instance/%s/%d/%d", modality, time.Now().UnixNano(), i), Type: TypeInstanceStored, Subject: "1.2.3",
			NATSSubject: InstanceStoredSubject(modality, "AE"),
			Data:        &InstanceStored{Modality: modality, SOPInstanceUID: fmt.Sprintf("1.2.3.%d", i)},
		}
		if _, err := p.Publish(testContext(t), e); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	return ids
}

// replayIDs returns the IDs of the events ReplayFrom reads with cfg.
func replayIDs(t *testing.T, js jetstream.JetStream, cfg ReplayConfig) []string {
	t.Helper()
	var ids []string
	err := ReplayFrom(testContext(t), js, cfg, func(s *Stored) error {
		e, err := s.Event()
		if err != nil {
			return err
		}
		ids = append(ids, e.ID)
		return nil
	})
	if err != nil {
		t.Fatalf("replay %+v: %v", cfg, err)
	}
	return ids
}

func TestReplayFromSequenceAndTime(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	ct := publish(t, js, "CT", 5)
	mr := publish(t, js, "MR", 2) // sequences 6 and 7
	all := append(slices.Clone(ct), mr...)

	if got := replayIDs(t, js, ReplayConfig{}); !slices.Equal(got, all) {
		t.Errorf("replay of everything: %q, want %q", got, all)
	}
	if got := replayIDs(t, js, ReplayConfig{StartSeq: 3}); !slices.Equal(got, all[2:]) {
		t.Errorf("replay from sequence 3: %q, want %q", got, all[2:])
	}
	if got := replayIDs(t, js, ReplayConfig{StartSeq: 3, FilterSubjects: []string{"pacs.instance.stored.CT.>"}}); !slices.Equal(got, ct[2:]) {
		t.Errorf("replay of CT from sequence 3: %q, want %q", got, ct[2:])
	}
	// From the time the stream stored the 4th event: the 4th and on.
	st, err := js.Stream(testContext(t), "PACSFLOW")
	if err != nil {
		t.Fatal(err)
	}
	fourth, err := st.GetMsg(testContext(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	if got := replayIDs(t, js, ReplayConfig{StartTime: fourth.Time}); !slices.Equal(got, all[3:]) {
		t.Errorf("replay from %s: %q, want %q", fourth.Time, got, all[3:])
	}
	if got := replayIDs(t, js, ReplayConfig{StartTime: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Errorf("replay from the future: %q", got)
	}
	if got := replayIDs(t, js, ReplayConfig{FilterSubjects: []string{"pacs.study.>"}}); len(got) != 0 {
		t.Errorf("replay of no matching subject: %q", got)
	}
	if err := ReplayFrom(testContext(t), js, ReplayConfig{StartSeq: 1, StartTime: time.Now()}, nil); err == nil {
		t.Error("a replay from both a sequence and a time started")
	}
}

func TestReplayFollow(t *testing.T) {
	js := provisioned(t, StreamConfig{})
	old := publish(t, js, "CT", 2)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	got := make(chan string)
	done := make(chan error, 1)
	go func() {
		done <- ReplayFrom(ctx, js, ReplayConfig{StartSeq: 2, Follow: true}, func(s *Stored) error {
			e, err := s.Event()
			if err != nil {
				return err
			}
			got <- e.ID
			return nil
		})
	}()
	if id := <-got; id != old[1] {
		t.Fatalf("first event %q, want %q", id, old[1])
	}
	later := publish(t, js, "MR", 1)
	select {
	case id := <-got:
		if id != later[0] {
			t.Fatalf("followed event %q, want %q", id, later[0])
		}
	case err := <-done:
		t.Fatalf("replay returned before a new event: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("following replay ended with %v; want nil when its context ends", err)
	}

	// fn's error ends the replay.
	stop := errors.New("stop")
	if err := ReplayFrom(testContext(t), js, ReplayConfig{}, func(*Stored) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("replay returned %v, want fn's error", err)
	}
}

// exampleJetStream starts an embedded server for an example, with the
// streams provisioned and three study events stored.
func exampleJetStream() (js jetstream.JetStream, stop func()) {
	dir, err := os.MkdirTemp("", "pacsflow-example")
	if err != nil {
		log.Fatal(err)
	}
	s, err := natsserver.Start(natsserver.Config{StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	nc, err := s.Connect()
	if err != nil {
		log.Fatal(err)
	}
	stop = func() {
		nc.Close()
		s.Shutdown()
		os.RemoveAll(dir)
	}
	ctx := context.Background()
	if js, err = jetstream.New(nc); err == nil {
		_, err = Provision(ctx, js, StreamConfig{})
	}
	p := NewPublisher(js, "example")
	for i := 1; err == nil && i <= 3; i++ {
		_, err = p.Publish(ctx, &Event{
			ID: fmt.Sprintf("study/1.2.%d/1", i), Type: TypeStudyReceived, Subject: fmt.Sprintf("1.2.%d", i),
			NATSSubject: StudySubject(SubjectStudyReceived, []string{"CT"}, "PACSFLOW"),
			Data:        &StudyReceived{NumInstances: 10 * i, Generation: 1},
		})
	}
	if err != nil {
		stop()
		log.Fatal(err)
	}
	return js, stop
}

// Read the received studies from stream sequence 2 to the end, as a
// one-off analysis would.
func ExampleReplayFrom() {
	js, stop := exampleJetStream()
	defer stop()

	err := ReplayFrom(context.Background(), js, ReplayConfig{
		FilterSubjects: []string{SubjectStudyReceived + ".>"},
		StartSeq:       2, // or StartTime: time.Now().Add(-24 * time.Hour)
	}, func(s *Stored) error {
		e, err := s.Event()
		if err != nil {
			return err
		}
		fmt.Println(s.Seq, e.Type, e.Subject)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// 2 org.pacsflow.study.received.v1 1.2.2
	// 3 org.pacsflow.study.received.v1 1.2.3
}
