// Command pacsflow is the pacsflow binary: the DICOM tools (storescp,
// storescu, echoscu) and, as they come, the pipeline services.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"storescp":   {"receive DICOM instances over C-STORE into a folder as Part 10 files", runStoreSCP},
	"storescu":   {"send DICOM Part 10 files over C-STORE", runStoreSCU},
	"echoscu":    {"verify a DICOM peer with C-ECHO", runEchoSCU},
	"up":         {"run the pipeline on this machine: embedded NATS JetStream, ingest, understand (the model) and the analytics stream", runUp},
	"ingest":     {"run the ingest service against an external NATS JetStream", runIngest},
	"events":     {"print the events kept in JetStream, from a time or a sequence, and follow new ones", runEvents},
	"dlq":        {"list the dead letters (events consumers gave up on) and replay them", runDLQ},
	"model":      {"inspect a model directory: its signatures and the model contract check", runModel},
	"synth":      {"write synthetic DICOM studies with known findings (chest phantoms) and their ground truth", runSynth},
	"understand": {"run the understand service (findings, draft reports, triage; ai.ask) against an external NATS JetStream", runUnderstand},
	"ask":        {"ask the understand service a question about an analyzed study", runAsk},
	"generate":   {"request synthetic images derived from a study, and fetch them as DICOM or PNG", runGenerate},
	"notify":     {"run the notify service (the worklist page and API, webhooks) against an external NATS JetStream", runNotify},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pacsflow: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	err := cmd.run(ctx, args[1:], stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	var ec exitCode
	if errors.As(err, &ec) {
		return int(ec) // the command has said why
	}
	fmt.Fprintf(stderr, "pacsflow %s: %v\n", args[0], err)
	return 1
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "pacsflow: an event-driven streaming pipeline for radiology archives.")
	fmt.Fprintln(w, "\nUsage: pacsflow COMMAND [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'pacsflow COMMAND --help' for the flags of a command. Every flag can also")
	fmt.Fprintln(w, "be set through the environment as PACSFLOW_<FLAG>, e.g. PACSFLOW_AE=ARCHIVE.")
}

// errUsage reports bad command-line input already explained to the user.
var errUsage = errors.New("usage")

// exitCode is an error that asks for a specific exit status, returned by a command that
// has already printed why.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// newFlagSet returns a flag set whose usage names the command and explains
// the environment fallback.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pacsflow %s\n\n%s\n\nFlags (each also settable as PACSFLOW_<FLAG>, dashes as underscores):\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, then fills every flag not given on the command
// line from its PACSFLOW_ environment variable.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := "PACSFLOW_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

// newLogger returns a structured logger on stderr at the given level
// ("debug", "info", "warn", "error"), as JSON or text.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// logFlags adds --log-level and --log-format to fs.
func logFlags(fs *flag.FlagSet) (level, format *string) {
	return fs.String("log-level", "info", "log level: debug, info, warn or error"),
		fs.String("log-format", "text", "log format: text or json")
}
