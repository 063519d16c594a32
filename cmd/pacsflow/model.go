package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/pkg/model"
)

// runModel runs `pacsflow model SUBCOMMAND`.
func runModel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runSubcommand(ctx, "model", map[string]command{
		"inspect": {"print a SavedModel's signatures and check it against the model contract", runModelInspect},
	}, args, stdout, stderr)
}

func runModelInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("model inspect [--run] DIR",
		"Prints what the model directory DIR says of itself (assets/model-contract.json), the\n"+
			"signatures its SavedModel has, and whether it fills pacsflow's model contract\n"+
			"(schemas/model-contract.md); exits 1 when it does not. Needs no TensorFlow unless --run\n"+
			"is given: --run also loads the model on --model-runtime and runs each signature once on\n"+
			"a blank batch, printing the load time and each signature's latency.", stderr)
	runIt := fs.Bool("run", false, "load the model and run every signature once")
	threads := fs.Int("threads", 0, "TensorFlow intra-op threads for --run (0: one per core)")
	runtime, plugin := addRuntimeFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	dir := fs.Arg(0)
	c, saved, checkErr := model.Inspect(dir)
	printModel(stdout, c, saved)
	if checkErr != nil {
		fmt.Fprintf(stdout, "contract check: FAILED: %v\n", checkErr)
		return exitCode(1)
	}
	fmt.Fprintf(stdout, "contract check: OK (contract version %s)\n", model.ContractVersion)
	if !*runIt {
		return nil
	}
	start := time.Now()
	m, err := model.Open(ctx, dir, model.Options{Runtime: *runtime, PJRTPlugin: *plugin, IntraOpThreads: *threads})
	if err != nil {
		return err
	}
	defer m.Close()
	fmt.Fprintf(stdout, "loaded in %v%s\n", time.Since(start).Round(time.Millisecond), residentMemory())
	if err := smokeRun(ctx, stdout, m); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "done%s\n", residentMemory())
	return nil
}

func printModel(w io.Writer, c *model.Contract, saved map[string]model.SavedSignature) {
	if c != nil {
		p := c.Preprocessing
		fmt.Fprintf(w, "model:        %s %s (contract %s)\n", c.Model.Name, c.Model.Version, c.ContractVersion)
		if c.Model.Description != "" {
			fmt.Fprintf(w, "description:  %s\n", c.Model.Description)
		}
		fmt.Fprintf(w, "intended use: %s\n", c.Model.IntendedUse)
		fmt.Fprintf(w, "labels:       %s\n", strings.Join(c.Labels, ", "))
		fmt.Fprintf(w, "images:       %d×%d×%d, values %v..%v, default window %v/%v, modalities %s\n",
			p.ImageSize[0], p.ImageSize[1], p.Channels, p.ValueRange[0], p.ValueRange[1], p.Window.Center, p.Window.Width,
			strings.Join(p.AcceptedModalities, ", "))
		if len(c.GenerateTasks) > 0 {
			fmt.Fprintf(w, "generate:     %s\n", strings.Join(slices.Sorted(maps.Keys(c.GenerateTasks)), ", "))
		}
	}
	fmt.Fprintln(w, "SavedModel signatures (tag serve):")
	for _, name := range slices.Sorted(maps.Keys(saved)) {
		note := "not in the contract: pacsflow does not use it"
		if c != nil && c.Has(name) {
			note = "in the contract"
		}
		fmt.Fprintf(w, "  %s (%s)\n", name, note)
		s := saved[name]
		for _, side := range []struct {
			kind  string
			specs map[string]model.TensorSpec
		}{{"input ", s.Inputs}, {"output", s.Outputs}} {
			for _, t := range slices.Sorted(maps.Keys(side.specs)) {
				fmt.Fprintf(w, "    %s %-17s %s\n", side.kind, t, side.specs[t])
			}
		}
	}
}

// residentMemory is ", resident memory N MiB" from /proc/self/status, or "" where there is no
// such file.
func residentMemory() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int
			if _, err := fmt.Sscan(rest, &kb); err == nil {
				return fmt.Sprintf(", resident memory %d MiB", kb/1024)
			}
		}
	}
	return ""
}

// smokeRun runs each of the model's signatures once on a blank image, timing each.
func smokeRun(ctx context.Context, w io.Writer, m *model.Model) error {
	for _, name := range slices.Sorted(maps.Keys(m.Contract().Signatures)) {
		start := time.Now()
		res, err := m.Probe(ctx, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "ran %-10s in %v: %s\n", name, time.Since(start).Round(time.Microsecond), res)
	}
	return nil
}
