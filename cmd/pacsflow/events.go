package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/events"
)

// runEvents runs `pacsflow events SUBCOMMAND`.
func runEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSubcommand(ctx, "events", map[string]command{
		"tail": {"print the events of the stream, one line each, from a time or a sequence, and follow new ones", runEventsTail},
	}, args, stdout, stderr)
}

// runSubcommand runs the subcommand of `pacsflow NAME` that args name.
func runSubcommand(ctx context.Context, name string, subs map[string]command, args []string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprintf(stderr, "Usage: pacsflow %s SUBCOMMAND [flags]\n\nSubcommands:\n", name)
		names := make([]string, 0, len(subs))
		for n := range subs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(stderr, "  %-8s %s\n", n, subs[n].summary)
		}
		fmt.Fprintf(stderr, "\nRun 'pacsflow %s SUBCOMMAND --help' for its flags.\n", name)
	}
	if len(args) == 0 {
		usage()
		return errUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage()
		return flag.ErrHelp
	}
	sub, ok := subs[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pacsflow %s: unknown subcommand %q\n\n", name, args[0])
		usage()
		return errUsage
	}
	return sub.run(ctx, args[1:], stdout, stderr)
}

// natsURLFlag adds --nats-url to fs.
func natsURLFlag(fs *flag.FlagSet) *string {
	return fs.String("nats-url", nats.DefaultURL, "NATS server with JetStream at `URL` (pacsflow up listens on the default)")
}

// noArgs refuses positional arguments after the flags.
func noArgs(fs *flag.FlagSet, stderr io.Writer) error {
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

// connectJetStream connects to NATS at url as the named client.
func connectJetStream(url, name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Name(name))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

func runEventsTail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("events tail [--subject S] [--since DURATION | --seq N] [--json] [--follow=false]",
		"Prints the events kept in JetStream, oldest first, one line each: time, stream sequence,\n"+
			"NATS subject, type, CloudEvents subject (the Study Instance UID) and a summary of the data;\n"+
			"with --json, one JSON object each with the headers and the data. It starts at the oldest\n"+
			"event kept, --since a duration ago or at the stream sequence --seq, then waits for new\n"+
			"events until interrupted, or stops at the last one with --follow=false.", stderr)
	url := natsURLFlag(fs)
	subject := fs.String("subject", "pacs.>", "only events whose NATS subject matches this filter, e.g. 'pacs.study.received.>'")
	since := fs.Duration("since", 0, "start with the events stored this long ago, e.g. 1h")
	seq := fs.Uint64("seq", 0, "start at this stream sequence")
	asJSON := fs.Bool("json", false, "print one JSON object per event: seq, time stored, subject, headers, data")
	follow := fs.Bool("follow", true, "wait for new events after the last one; false: stop there")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	if *since > 0 && *seq > 0 {
		fmt.Fprintln(stderr, "--since and --seq are exclusive")
		return errUsage
	}
	nc, js, err := connectJetStream(*url, "pacsflow-events-tail")
	if err != nil {
		return err
	}
	defer nc.Close()
	stream, err := js.StreamNameBySubject(ctx, *subject)
	if err != nil {
		return fmt.Errorf("the stream that keeps %s: %w", *subject, err)
	}
	if strings.HasPrefix(stream, "KV_") || strings.HasPrefix(stream, "OBJ_") {
		return fmt.Errorf("--subject %s first matches %s, a key-value or object store, not events: events are on pacs.> and analytics.>", *subject, stream)
	}
	cfg := events.ReplayConfig{Stream: stream, FilterSubjects: []string{*subject}, StartSeq: *seq, Follow: *follow}
	if *since > 0 {
		cfg.StartTime = time.Now().Add(-*since)
	}
	return events.ReplayFrom(ctx, js, cfg, func(s *events.Stored) error {
		if *asJSON {
			return writeJSONLine(stdout, storedJSON{Seq: s.Seq, Time: s.Time, Subject: s.Subject, Headers: flatHeaders(s.Header), Data: jsonData(s.Data)})
		}
		_, err := fmt.Fprintln(stdout, eventLine(s))
		return err
	})
}

// eventLine describes a stored event for people.
func eventLine(s *events.Stored) string {
	e, err := s.Event()
	if err != nil {
		return fmt.Sprintf("%s #%d %s (%d bytes; %v)", formatTime(s.Time), s.Seq, s.Subject, len(s.Data), err)
	}
	t := e.Time
	if t.IsZero() {
		t = s.Time
	}
	line := fmt.Sprintf("%s #%d %s %s %s", formatTime(t), s.Seq, s.Subject, strings.TrimPrefix(e.Type, "org.pacsflow."), orDash(e.Subject))
	if sum := summary(e); sum != "" {
		line += " " + sum
	}
	return line
}

// summary gives the gist of the data of the event types it knows.
func summary(e *events.Received) string {
	switch e.Type {
	case events.TypeInstanceStored:
		var d events.InstanceStored
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return "(data: " + err.Error() + ")"
		}
		return fmt.Sprintf("modality=%s sop=%s bytes=%d", orDash(d.Modality), orDash(d.SOPInstanceUID), d.Object.Size)
	case events.TypeStudyReceived, events.TypeStudyUpdated:
		var d events.StudyReceived
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return "(data: " + err.Error() + ")"
		}
		return fmt.Sprintf("series=%d instances=%d bytes=%d trigger=%s generation=%d", d.NumSeries, d.NumInstances, d.Bytes, orDash(d.Trigger), d.Generation)
	case events.TypeAITriage:
		var d events.AITriage
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return "(data: " + err.Error() + ")"
		}
		return fmt.Sprintf("level=%s score=%.2f generation=%d", d.Level, d.Score, d.Generation)
	case events.TypeWorklistUpdated:
		var d events.WorklistUpdated
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return "(data: " + err.Error() + ")"
		}
		return fmt.Sprintf("change=%s level=%s pending=%v status=%s revision=%d", d.Change, d.Level, d.Pending, d.Status, d.Revision)
	}
	return ""
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatTime shows a time to the millisecond, in the local zone.
func formatTime(t time.Time) string { return t.Local().Format("2006-01-02T15:04:05.000Z07:00") }

// storedJSON is a stored message in --json output.
type storedJSON struct {
	Seq     uint64            `json:"seq"`
	Time    time.Time         `json:"time"`
	Subject string            `json:"subject"`
	Headers map[string]string `json:"headers"`
	Data    json.RawMessage   `json:"data"`
}

// flatHeaders gives each header one string, joining repeated values with
// ", " as HTTP does: simpler to query than lists, which NATS headers
// rarely need.
func flatHeaders(h nats.Header) map[string]string {
	out := make(map[string]string, len(h))
	for k, v := range h {
		out[k] = strings.Join(v, ", ")
	}
	return out
}

// jsonData embeds a body that is JSON as is, and any other as a string.
func jsonData(b []byte) json.RawMessage {
	switch {
	case len(b) == 0:
		return json.RawMessage("null")
	case json.Valid(b):
		return json.RawMessage(b)
	}
	s, _ := json.Marshal(string(b)) // a string always marshals
	return s
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
