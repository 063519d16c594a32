package main

// Tests of `pacsflow events` and `pacsflow dlq`: each command runs as main
// dispatches it (flag parsing with the environment fallback, output, usage
// errors) against an embedded NATS server listening on loopback, reached
// through --nats-url as a pipeline's would be.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/internal/syncbuf"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
)

// cliTimeout bounds every command and wait of these tests.
const cliTimeout = time.Minute

// startNATS starts an embedded server on a loopback port with pacsflow's
// streams, and clears the PACSFLOW_ variables that would set the flags of
// the commands under test.
func startNATS(t *testing.T) (url string, js jetstream.JetStream) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PACSFLOW_") {
			t.Setenv(k, "") // restores it after the test
			os.Unsetenv(k)
		}
	}
	s, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	if _, err := events.Provision(ctx, js, events.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	return s.ClientURL(), js
}

type commandFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// runCLI runs a command to its end and returns its output lines.
func runCLI(t *testing.T, fn commandFunc, args ...string) (lines []string, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	var out, errOut bytes.Buffer
	err = fn(ctx, args, &out, &errOut)
	if s := strings.TrimSuffix(out.String(), "\n"); s != "" {
		lines = strings.Split(s, "\n")
	}
	return lines, errOut.String(), err
}

// mustRun runs a command that must succeed.
func mustRun(t *testing.T, fn commandFunc, args ...string) []string {
	t.Helper()
	lines, stderr, err := runCLI(t, fn, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return lines
}

func publishEvents(t *testing.T, js jetstream.JetStream, evs ...*events.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	p := events.NewPublisher(js, "pacsflow/test")
	for _, e := range evs {
		if _, err := p.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
}

func instanceEvent(modality, sop string, size int64) *events.Event {
	return &events.Event{ID: "instance/" + sop, Type: events.TypeInstanceStored, Subject: "1.2.3",
		NATSSubject: events.InstanceStoredSubject(modality, "PACSFLOW"),
		Data: &events.InstanceStored{Modality: modality, SOPInstanceUID: sop, Object: events.StoredObject{Size: size},
			Study: events.Study{StudyInstanceUID: "1.2.3"}}}
}

func studyEvent() *events.Event {
	return &events.Event{ID: "study/1.2.3/1", Type: events.TypeStudyReceived, Subject: "1.2.3",
		NATSSubject: events.StudySubject(events.SubjectStudyReceived, []string{"CT", "MR"}, "PACSFLOW"),
		Data:        &events.StudyReceived{NumSeries: 2, NumInstances: 4, Bytes: 2112600, Trigger: "quiet-period", Generation: 1}}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(cliTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", cliTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEventsTail(t *testing.T) {
	url, js := startNATS(t)
	publishEvents(t, js, instanceEvent("CT", "1.2.3.1.1", 528150), studyEvent(), instanceEvent("MR", "1.2.3.2.1", 1000))
	tail := func(args ...string) []string {
		return mustRun(t, runEvents, append([]string{"tail", "--nats-url", url, "--follow=false"}, args...)...)
	}

	lines := tail()
	if len(lines) != 3 {
		t.Fatalf("tail printed %d lines, want 3:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, want := range []string{
		" #1 pacs.instance.stored.CT.PACSFLOW instance.stored.v1 1.2.3 modality=CT sop=1.2.3.1.1 bytes=528150",
		" #2 pacs.study.received.CT+MR.PACSFLOW study.received.v1 1.2.3 series=2 instances=4 bytes=2112600 trigger=quiet-period generation=1",
		" #3 pacs.instance.stored.MR.PACSFLOW instance.stored.v1 1.2.3 modality=MR sop=1.2.3.2.1 bytes=1000",
	} {
		if !strings.HasSuffix(lines[i], want) {
			t.Errorf("line %d: %q; want it to end with %q", i+1, lines[i], want)
		}
		if _, err := time.Parse("2006-01-02T15:04:05.000Z07:00", strings.Fields(lines[i])[0]); err != nil {
			t.Errorf("line %d does not start with a time: %v", i+1, err)
		}
	}
	if got := tail("--seq", "2"); len(got) != 2 || got[0] != lines[1] || got[1] != lines[2] {
		t.Errorf("tail --seq 2:\n%s", strings.Join(got, "\n"))
	}
	if got := tail("--subject", "pacs.study.>"); len(got) != 1 || got[0] != lines[1] {
		t.Errorf("tail --subject pacs.study.>:\n%s", strings.Join(got, "\n"))
	}
	if got := tail("--since", "1h"); len(got) != 3 {
		t.Errorf("tail --since 1h: %d lines, want 3", len(got))
	}
	if got := tail("--subject", "pacs.study.updated.>"); len(got) != 0 {
		t.Errorf("tail of a subject without events: %q", got)
	}

	got := tail("--json", "--seq", "3")
	if len(got) != 1 {
		t.Fatalf("tail --json --seq 3: %d lines", len(got))
	}
	var ev struct {
		Seq     uint64            `json:"seq"`
		Time    time.Time         `json:"time"`
		Subject string            `json:"subject"`
		Headers map[string]string `json:"headers"`
		Data    struct {
			Modality string `json:"modality"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(got[0]), &ev); err != nil {
		t.Fatalf("%s: %v", got[0], err)
	}
	if ev.Seq != 3 || ev.Time.IsZero() || ev.Subject != "pacs.instance.stored.MR.PACSFLOW" || ev.Headers["ce-type"] != events.TypeInstanceStored ||
		ev.Headers["ce-id"] != "instance/1.2.3.2.1" || ev.Data.Modality != "MR" {
		t.Errorf("tail --json: %s", got[0])
	}

	// The environment fills the flags not given.
	t.Setenv("PACSFLOW_NATS_URL", url)
	t.Setenv("PACSFLOW_FOLLOW", "false")
	t.Setenv("PACSFLOW_SEQ", "3")
	if got := mustRun(t, runEvents, "tail"); len(got) != 1 || got[0] != lines[2] {
		t.Errorf("tail configured by the environment:\n%s", strings.Join(got, "\n"))
	}
}

func TestEventsTailFollows(t *testing.T) {
	url, js := startNATS(t)
	publishEvents(t, js, instanceEvent("CT", "1.2.3.1.1", 1))
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	var out syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- runEvents(ctx, []string{"tail", "--nats-url", url}, &out, io.Discard) }()
	waitUntil(t, "the stored event", func() bool { return strings.Count(out.String(), "\n") == 1 })
	publishEvents(t, js, instanceEvent("CT", "1.2.3.1.2", 2))
	waitUntil(t, "the new event", func() bool { return strings.Count(out.String(), "\n") == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("interrupted tail: %v", err)
	}
}

func TestEventsUsage(t *testing.T) {
	url, js := startNATS(t)
	for _, c := range []struct {
		args []string
		want error
	}{
		{nil, errUsage},
		{[]string{"nope"}, errUsage},
		{[]string{"--help"}, flag.ErrHelp},
		{[]string{"tail", "--help"}, flag.ErrHelp},
		{[]string{"tail", "--nats-url", url, "--since", "1h", "--seq", "2"}, errUsage},
		{[]string{"tail", "--nats-url", url, "pacs.>"}, errUsage},
		{[]string{"tail", "--nats-url", url, "--bogus"}, errUsage},
	} {
		if _, stderr, err := runCLI(t, runEvents, c.args...); !errors.Is(err, c.want) || stderr == "" {
			t.Errorf("events %q: %v, want %v; stderr:\n%s", c.args, err, c.want, stderr)
		}
	}
	if _, stderr, _ := runCLI(t, runEvents, "tail", "--help"); !strings.Contains(stderr, "Usage: pacsflow events tail") || !strings.Contains(stderr, "-since") {
		t.Errorf("events tail --help:\n%s", stderr)
	}

	// A filter that reaches a bucket's stream is refused rather than
	// printing its entries as broken events.
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "probe"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, runEvents, "tail", "--nats-url", url, "--follow=false", "--subject", "$KV.probe.>"); err == nil || !strings.Contains(err.Error(), "not events") {
		t.Errorf("tail of a key-value bucket's subjects: %v, want a refusal", err)
	}
}

// deadLetterFixture stores three events and dead-letters two: the study
// event, poison to "router", and the CT instance, failing twice for
// "indexer".
func deadLetterFixture(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	publishEvents(t, js, instanceEvent("CT", "1.2.3.1.1", 10), studyEvent(), instanceEvent("MR", "1.2.3.2.1", 20))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, c := range []struct {
		cfg events.ConsumerConfig
		h   events.Handler
	}{
		{events.ConsumerConfig{Durable: "router", FilterSubjects: []string{"pacs.study.>"}},
			func(context.Context, *events.Delivery) error { return events.Poison(errors.New("no series")) }},
		{events.ConsumerConfig{Durable: "indexer", FilterSubjects: []string{"pacs.instance.stored.>"}, MaxDeliver: 2, Backoff: []time.Duration{10 * time.Millisecond}},
			func(_ context.Context, d *events.Delivery) error {
				if strings.Contains(d.Event.NATSSubject, ".CT.") {
					return errors.New("index unavailable")
				}
				return nil
			}},
	} {
		wg.Go(func() {
			if err := events.Consume(ctx, js, c.cfg, c.h); err != nil {
				t.Error(err)
			}
		})
	}
	waitUntil(t, "two dead letters", func() bool {
		n := 0
		lctx, lcancel := context.WithTimeout(context.Background(), cliTimeout)
		defer lcancel()
		if err := events.ListDeadLetters(lctx, js, events.StreamConfig{}, "", func(*events.DeadLetter) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n == 2
	})
	cancel()
	wg.Wait()
}

func TestDLQ(t *testing.T) {
	url, js := startNATS(t)
	deadLetterFixture(t, js)
	dlq := func(args ...string) []string {
		return mustRun(t, runDLQ, append(args[:1:1], append([]string{"--nats-url", url}, args[1:]...)...)...)
	}

	lines := dlq("list")
	if len(lines) != 2 {
		t.Fatalf("dlq list: %d lines, want 2:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{
		" router deliveries=1 pacs.study.received.CT+MR.PACSFLOW org.pacsflow.study.received.v1 study/1.2.3/1 poison message: no series",
		" indexer deliveries=2 pacs.instance.stored.CT.PACSFLOW org.pacsflow.instance.stored.v1 instance/1.2.3.1.1 index unavailable",
	} {
		if !strings.HasSuffix(lines[0], want) && !strings.HasSuffix(lines[1], want) {
			t.Errorf("dlq list lacks a line ending with %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	got := dlq("list", "--consumer", "router", "--json")
	if len(got) != 1 {
		t.Fatalf("dlq list --consumer router --json: %d lines", len(got))
	}
	var d struct {
		Seq        uint64            `json:"seq"`
		Consumer   string            `json:"consumer"`
		Deliveries int               `json:"deliveries"`
		Error      string            `json:"error"`
		Stream     string            `json:"stream"`
		StreamSeq  uint64            `json:"stream_seq"`
		Subject    string            `json:"subject"`
		Headers    map[string]string `json:"headers"`
		Data       struct {
			Trigger string `json:"trigger"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(got[0]), &d); err != nil {
		t.Fatalf("%s: %v", got[0], err)
	}
	if d.Consumer != "router" || d.Deliveries != 1 || d.Error != "poison message: no series" || d.Stream != "PACSFLOW" || d.StreamSeq != 2 ||
		d.Subject != "pacs.study.received.CT+MR.PACSFLOW" || d.Headers["ce-id"] != "study/1.2.3/1" || d.Data.Trigger != "quiet-period" {
		t.Errorf("dlq list --json: %s", got[0])
	}

	// Replay the router's dead letter and delete it.
	seq := d.Seq
	out := dlq("replay", "--consumer", "router", "--seq", strconv.FormatUint(seq, 10), "--purge")
	if len(out) != 2 || !strings.HasPrefix(out[0], "replayed #"+strconv.FormatUint(seq, 10)+" study/1.2.3/1 to pacs.study.received.CT+MR.PACSFLOW; dead letter deleted") {
		t.Errorf("dlq replay --seq:\n%s", strings.Join(out, "\n"))
	}
	replayed := mustRun(t, runEvents, "tail", "--nats-url", url, "--follow=false", "--json", "--seq", "4")
	if len(replayed) != 1 || !strings.Contains(replayed[0], `"ce-id":"study/1.2.3/1"`) || !strings.Contains(replayed[0], `"Nats-Msg-Id":"study/1.2.3/1/replay/`+strconv.FormatUint(seq, 10)+`"`) {
		t.Errorf("the replayed event:\n%s", strings.Join(replayed, "\n"))
	}
	if got := dlq("list", "--consumer", "router"); len(got) != 0 {
		t.Errorf("router's dead letters after replay --purge: %q", got)
	}

	// Replay all of the indexer's, keeping them.
	if out := dlq("replay", "--consumer", "indexer", "--all"); len(out) != 2 || out[1] != "1 dead letters of indexer replayed" {
		t.Errorf("dlq replay --all:\n%s", strings.Join(out, "\n"))
	}
	if got := dlq("list"); len(got) != 1 {
		t.Errorf("dead letters after replay without --purge: %q", got)
	}

	for _, args := range [][]string{
		{"replay", "--nats-url", url, "--consumer", "indexer"},
		{"replay", "--nats-url", url, "--consumer", "indexer", "--seq", "1", "--all"},
		{"replay", "--nats-url", url, "--all"},
		{"list", "--nats-url", url, "extra"},
		{},
	} {
		if _, _, err := runCLI(t, runDLQ, args...); !errors.Is(err, errUsage) {
			t.Errorf("dlq %q: %v, want a usage error", args, err)
		}
	}
	indexerSeq := strings.Fields(dlq("list")[0])[1][1:]
	if _, _, err := runCLI(t, runDLQ, "replay", "--nats-url", url, "--consumer", "router", "--seq", indexerSeq); err == nil || !strings.Contains(err.Error(), "consumer indexer's, not router's") {
		t.Errorf("replay of another consumer's dead letter: %v", err)
	}
}
