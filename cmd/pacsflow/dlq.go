package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/pacsflow/pacsflow/pkg/events"
)

// runDLQ runs `pacsflow dlq SUBCOMMAND`.
func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSubcommand(ctx, "dlq", map[string]command{
		"list":   {"list the dead letters: the events consumers gave up on, and why", runDLQList},
		"replay": {"publish dead letters' events again, for their consumers to retry", runDLQReplay},
	}, args, stdout, stderr)
}

func runDLQList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dlq list [--consumer C] [--json]",
		"Lists the dead letters in the stream PACSFLOW_DLQ, oldest first, one line each: time\n"+
			"recorded, sequence in the dead-letter stream (for dlq replay --seq), consumer, deliveries,\n"+
			"original subject, ce-type, ce-id and the error; with --json, one JSON object each, with\n"+
			"the original's headers and data.", stderr)
	url := natsURLFlag(fs)
	consumer := fs.String("consumer", "", "only this consumer's dead letters")
	asJSON := fs.Bool("json", false, "print one JSON object per dead letter")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	nc, js, err := connectJetStream(*url, "pacsflow-dlq")
	if err != nil {
		return err
	}
	defer nc.Close()
	return events.ListDeadLetters(ctx, js, events.StreamConfig{}, *consumer, func(d *events.DeadLetter) error {
		if *asJSON {
			return writeJSONLine(stdout, deadLetterJSON{
				Seq: d.Seq, Time: d.Time, Consumer: d.Consumer, Deliveries: d.Deliveries, Error: d.Error,
				Stream: d.Stream, StreamSeq: d.StreamSeq, Subject: d.Subject, Headers: flatHeaders(d.Header), Data: jsonData(d.Data),
			})
		}
		_, err := fmt.Fprintf(stdout, "%s #%d %s deliveries=%d %s %s %s %s\n", formatTime(d.Time), d.Seq, d.Consumer, d.Deliveries,
			orDash(d.Subject), orDash(d.Header.Get(events.HeaderType)), orDash(d.Header.Get(events.HeaderID)), d.Error)
		return err
	})
}

// deadLetterJSON is a dead letter in --json output.
type deadLetterJSON struct {
	Seq        uint64            `json:"seq"`
	Time       time.Time         `json:"time"`
	Consumer   string            `json:"consumer"`
	Deliveries int               `json:"deliveries"`
	Error      string            `json:"error"`
	Stream     string            `json:"stream"`
	StreamSeq  uint64            `json:"stream_seq"`
	Subject    string            `json:"subject,omitempty"`
	Headers    map[string]string `json:"headers"`
	Data       json.RawMessage   `json:"data"`
}

func runDLQReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dlq replay --consumer C (--seq N | --all) [--purge]",
		"Publishes the events of dead letters again on their original subjects, with their ce-\n"+
			"headers and a new Nats-Msg-Id (<ce-id>/replay/<dead letter seq>, so that JetStream does\n"+
			"not take them for the originals, and stores a second replay within 2 minutes once).\n"+
			"Every consumer of those subjects gets them again, not only C. --purge deletes each dead\n"+
			"letter once its event is stored again.", stderr)
	url := natsURLFlag(fs)
	consumer := fs.String("consumer", "", "the consumer whose dead letters are replayed (required)")
	seq := fs.Uint64("seq", 0, "replay the dead letter at this sequence of the dead-letter stream (see dlq list)")
	all := fs.Bool("all", false, "replay every dead letter of --consumer")
	purge := fs.Bool("purge", false, "delete each dead letter once replayed")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	if *consumer == "" || (*seq > 0) == *all {
		fmt.Fprintln(stderr, "--consumer and one of --seq and --all are required")
		fs.Usage()
		return errUsage
	}
	nc, js, err := connectJetStream(*url, "pacsflow-dlq")
	if err != nil {
		return err
	}
	defer nc.Close()
	streams := events.StreamConfig{}
	var letters []*events.DeadLetter
	if *all {
		err = events.ListDeadLetters(ctx, js, streams, *consumer, func(d *events.DeadLetter) error {
			letters = append(letters, d)
			return nil
		})
	} else {
		var d *events.DeadLetter
		if d, err = events.GetDeadLetter(ctx, js, streams, *seq); err == nil && d.Consumer != *consumer {
			err = fmt.Errorf("dead letter %d is consumer %s's, not %s's", *seq, d.Consumer, *consumer)
		}
		letters = append(letters, d)
	}
	if err != nil {
		return err
	}
	for i, d := range letters {
		dup, err := events.ReplayDeadLetter(ctx, js, streams, d, *purge)
		if err != nil {
			return fmt.Errorf("%w (%d of %d replayed)", err, i, len(letters))
		}
		note := ""
		if dup {
			note = " (replayed before: stored once)"
		}
		if *purge {
			note += "; dead letter deleted"
		}
		fmt.Fprintf(stdout, "replayed #%d %s to %s%s\n", d.Seq, orDash(d.Header.Get(events.HeaderID)), d.Subject, note)
	}
	fmt.Fprintf(stdout, "%d dead letters of %s replayed\n", len(letters), *consumer)
	return nil
}
