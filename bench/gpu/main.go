// Command gpu checks and measures a model runtime on the machine it runs on; bench/gpu/run.sh
// runs it on a GPU machine with the pjrt runtime and NVIDIA's PJRT plugin, bench/gpu/prepare.sh
// here with the TensorFlow runtime and XLA's CPU plugin, for the comparison:
//
//	gpu --model DIR --runtime pjrt --pjrt-plugin PATH --reference reference.json [--batches 1,8,32] [--seconds 5]
//
// It opens the model (its load time is the compile time of every StableHLO module with pjrt),
// runs every signature on the inputs of --reference (model/reference_outputs.py: a fixed batch
// of 3, with the outputs Python TensorFlow computed on CPU) and compares: floats within
// --tolerance, integers (tokens) exactly, a differing token reported with its position. Then
// it runs understand on batches of each size of --batches for --seconds each and prints the
// images/s. Lines starting with RESULT are for scripts; it exits 1 when a comparison fails.
//
// It imports no TensorFlow unless built with the tensorflow tag, so the binary for a GPU
// machine (prepare.sh builds it with cgo, without the tag) needs nothing there but the plugin.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/pkg/model"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gpu:", err)
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("model", "", "the model directory (with stablehlo/ for the pjrt runtime)")
	rt := flag.String("runtime", model.RuntimePJRT, "tensorflow or pjrt")
	plugin := flag.String("pjrt-plugin", "", "the PJRT plugin library (pjrt)")
	reference := flag.String("reference", "", "model/reference_outputs.py's JSON for the model")
	tolerance := flag.Float64("tolerance", 1e-3, "largest absolute difference allowed in float outputs")
	batches := flag.String("batches", "1,8,32", "batch sizes to time understand at")
	seconds := flag.Duration("seconds", 5*time.Second, "how long to time each batch size")
	threads := flag.Int("threads", 1, "TensorFlow intra-op and inter-op threads (tensorflow; 0: TensorFlow chooses; 1 is pacsflow's default)")
	flag.Parse()
	if *dir == "" || *reference == "" {
		flag.Usage()
		return errors.New("--model and --reference are required")
	}
	sizes, err := ints(*batches)
	if err != nil {
		return err
	}
	ctx := context.Background()
	host, _ := os.Hostname()
	fmt.Printf("machine: %s, %d CPUs (GOMAXPROCS %d)\n", host, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	start := time.Now()
	m, err := model.Open(ctx, *dir, model.Options{Runtime: *rt, PJRTPlugin: *plugin, IntraOpThreads: *threads, InterOpThreads: *threads, GPUMemoryGrowth: true})
	if err != nil {
		return err
	}
	defer m.Close()
	load := time.Since(start)
	fmt.Printf("RESULT test=load runtime=%s plugin=%q seconds=%.2f\n", *rt, *plugin, load.Seconds())

	failed, err := compare(ctx, m, *reference, *tolerance)
	if err != nil {
		return err
	}
	for _, n := range sizes {
		if err := timeUnderstand(ctx, m, *rt, n, *seconds); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d outputs differ from Python TensorFlow's", failed)
	}
	return nil
}

// compare runs every signature on the reference inputs and returns how many outputs differ.
func compare(ctx context.Context, m *model.Model, path string, tol float64) (int, error) {
	runs, err := model.ReadReferenceRuns(path)
	if err != nil {
		return 0, err
	}
	failed := 0
	for _, sig := range slices.Sorted(maps.Keys(runs)) {
		got, err := m.Runtime().Run(ctx, sig, runs[sig].Inputs)
		if err != nil {
			return 0, fmt.Errorf("run %s: %w", sig, err)
		}
		for _, d := range model.CompareOutputs(got, runs[sig].Outputs) {
			switch {
			case d.Err != nil:
				failed++
				fmt.Printf("RESULT test=compare signature=%s output=%s ok=false why=%q\n", sig, d.Name, d.Err)
			case d.Float:
				if d.MaxAbs > tol {
					failed++
				}
				fmt.Printf("RESULT test=compare signature=%s output=%s ok=%t max_abs_diff=%.3g\n", sig, d.Name, d.MaxAbs <= tol, d.MaxAbs)
			default:
				if d.FirstDiff >= 0 {
					failed++
				}
				fmt.Printf("RESULT test=compare signature=%s output=%s ok=%t first_differing_token=%d\n", sig, d.Name, d.FirstDiff < 0, d.FirstDiff)
			}
		}
	}
	return failed, nil
}

// timeUnderstand runs understand on batches of n images for about d and prints the rate.
func timeUnderstand(ctx context.Context, m *model.Model, rt string, n int, d time.Duration) error {
	size := m.Contract().Preprocessing.ImageSize
	per := size[0] * size[1] * m.Contract().Preprocessing.Channels
	in := &model.Tensor{Shape: []int64{int64(n), int64(size[0]), int64(size[1]), int64(m.Contract().Preprocessing.Channels)}, F32: make([]float32, n*per)}
	for i := range in.F32 {
		in.F32[i] = float32(i%251) / 251
	}
	inputs := map[string]*model.Tensor{"images": in}
	if _, err := m.Runtime().Run(ctx, model.SigUnderstand, inputs); err != nil { // the first run of a size pays for set-up
		return err
	}
	var lat []float64
	start := time.Now()
	for time.Since(start) < d {
		t := time.Now()
		if _, err := m.Runtime().Run(ctx, model.SigUnderstand, inputs); err != nil {
			return err
		}
		lat = append(lat, time.Since(t).Seconds()*1e3)
	}
	el := time.Since(start).Seconds()
	slices.Sort(lat)
	fmt.Printf("RESULT test=understand runtime=%s batch=%d runs=%d images_per_s=%.1f p50_ms=%.2f p95_ms=%.2f\n",
		rt, n, len(lat), float64(n*len(lat))/el, lat[len(lat)/2], lat[len(lat)*95/100])
	return nil
}

func ints(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive integers, comma-separated", s)
		}
		out = append(out, n)
	}
	return out, nil
}
