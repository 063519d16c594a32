// Package benchkit holds what the service benchmarks (bench/understand and
// bench/generate) share: the program's skeleton (flags, exit codes, work
// folder, progress and machine lines), the embedded NATS JetStream server and
// object store, synthetic studies put into it with their study events, and
// reading a service run's Prometheus metrics and result events.
package benchkit

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pacsflow/pacsflow/pkg/model"
)

// Main runs a benchmark program called name: it parses the command line with
// parse, then runs run until it returns or SIGINT or SIGTERM cancels its
// context. It exits 2 on a flag error ("NAME bench: ..."), 1 when run fails
// ("NAME bench: FAIL: ..."), and 0 after --help.
func Main[O any](name string, parse func(args []string) (O, error), run func(ctx context.Context, o O) error) {
	o, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s bench: %v\n", name, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s bench: FAIL: %v\n", name, err)
		os.Exit(1)
	}
}

// Common is the flags both benchmarks have, with the same meaning and
// defaults; a program's options embed it and Register adds them to its flag
// set.
type Common struct {
	Model, Python, Work string
	Runtime, PJRTPlugin string
	Keep                bool
	Seed                int
	IntraOp, InterOp    int
	Timeout             time.Duration
}

// ModelOptions are the options the common flags give model.Open.
func (c *Common) ModelOptions() model.Options {
	return model.Options{Runtime: c.Runtime, PJRTPlugin: c.PJRTPlugin, IntraOpThreads: c.IntraOp, InterOpThreads: c.InterOp}
}

// Register adds the common flags to fs.
func (c *Common) Register(fs *flag.FlagSet) {
	py := os.Getenv("PACSFLOW_PYTHON")
	if py == "" {
		py = "python3"
	}
	fs.StringVar(&c.Model, "model", "model/reference", "model directory")
	fs.StringVar(&c.Runtime, "model-runtime", model.RuntimeTensorFlow, "tensorflow, or pjrt (the model's StableHLO, model/export_stablehlo.py, through --pjrt-plugin)")
	fs.StringVar(&c.PJRTPlugin, "pjrt-plugin", os.Getenv("PACSFLOW_PJRT_PLUGIN"), "the PJRT plugin library of the pjrt runtime ($PACSFLOW_PJRT_PLUGIN when set)")
	fs.StringVar(&c.Python, "python", py, "Python with numpy, for the phantom generator ($PACSFLOW_PYTHON when set, else python3)")
	fs.StringVar(&c.Work, "work", "", "folder for the studies and the NATS store, kept (default: a new temporary folder, removed at the end unless --keep)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temporary work folder")
	fs.IntVar(&c.Seed, "seed", 1, "seed of the synthetic studies")
	fs.IntVar(&c.IntraOp, "intra-op", 1, "TensorFlow intra-op threads (0: one per core)")
	fs.IntVar(&c.InterOp, "inter-op", 1, "TensorFlow inter-op threads (0: TensorFlow chooses)")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "longest wait for a run's results")
}

// Ints parses the comma-separated positive integers s of flag --name.
func Ints(name, s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--%s %q: want positive integers", name, s)
		}
		out = append(out, n)
	}
	return out, nil
}

// Choices parses the comma-separated words s of flag --name, each one of
// all; what names one in the error ("phase", "task").
func Choices(name, what, s string, all []string) ([]string, error) {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(all, f) {
			return nil, fmt.Errorf("--%s: unknown %s %q (have %s)", name, what, f, strings.Join(all, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

// Logger is the services' logger on stderr: warnings, and info lines too
// when verbose.
func Logger(verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// WorkFolder is the folder a run works in: work, or without it a new
// temporary folder named by prefix. Call done(&err) at the end (deferred):
// it removes a folder made here unless keep, and sets *err when that fails
// and *err is nil. Only a folder made here is removed: one named with --work
// may hold other things.
func WorkFolder(work string, keep bool, prefix string) (dir string, done func(err *error), err error) {
	dir = work
	if dir == "" {
		if dir, err = os.MkdirTemp("", prefix); err != nil {
			return "", nil, fmt.Errorf("work folder: %w", err)
		}
	}
	done = func(err *error) {
		if work == "" && !keep {
			if rerr := os.RemoveAll(dir); rerr != nil && *err == nil {
				*err = fmt.Errorf("remove the work folder: %w", rerr)
			}
		}
	}
	Progress("work folder %s", dir)
	return dir, done, nil
}

// Progress prints a progress line on stderr, after the time of day.
func Progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// PrintMachine prints the machine line (CPUs, GOMAXPROCS, load average) and
// returns the load average, for the setup RESULT line.
func PrintMachine() string {
	load := LoadAverage()
	fmt.Printf("machine: %d CPUs (GOMAXPROCS %d), load average %s at start\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), load)
	return load
}

// PrintEnd prints the load average at the end, and its RESULT line.
func PrintEnd() {
	load := LoadAverage()
	fmt.Printf("load average %s at the end\n", load)
	fmt.Printf("RESULT test=end load_end=%s\n", strings.ReplaceAll(load, " ", ","))
}

// PrintModel prints the line of model m, opened since start with the
// options of c.
func PrintModel(m *model.Model, c *Common, start time.Time) {
	mc := m.Contract()
	fmt.Printf("model: %s %s from %s on %s, loaded in %v; TensorFlow threads intra-op %d, inter-op %d (0: TensorFlow's default)\n",
		mc.Model.Name, mc.Model.Version, c.Model, c.Runtime, time.Since(start).Round(time.Millisecond), c.IntraOp, c.InterOp)
}

// LoadAverage is the 1, 5 and 15 minute load averages, or "unknown".
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// CPUTime is the CPU seconds this process has used, user and system; NaN
// where getrusage fails.
func CPUTime() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// Ms is d in milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / 1e6 }

// Pct is the nearest-rank percentile p of v (0: minimum, 100: maximum);
// NaN for no values.
func Pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if p <= 0 {
		return s[0]
	}
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}

// Profiled wraps a measurement in a Go CPU profile written to path; with
// no path it is the measurement itself.
func Profiled(path string, measure func(context.Context) error) func(context.Context) error {
	if path == "" {
		return measure
	}
	return func(ctx context.Context) (err error) {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("cpu profile: %w", cerr)
			}
		}()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
		return measure(ctx)
	}
}
