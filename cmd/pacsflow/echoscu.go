package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

func runEchoSCU(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("echoscu [flags]",
		"Opens an association, sends C-ECHO requests (the DICOM ping), prints each status and the\n"+
			"round-trip time, and releases the association. Exits non-zero unless every echo succeeds.", stderr)
	cf := addClientFlags(fs)
	count := fs.Int("count", 1, "number of C-ECHOs to send in the one association")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := cf.config()
	if err != nil {
		return err
	}
	if *count < 1 {
		return fmt.Errorf("--count must be at least 1")
	}
	start := time.Now()
	c, err := dimse.Dial(ctx, *cf.addr, cfg, []dimse.Proposal{{
		AbstractSyntax:   uid.Verification,
		TransferSyntaxes: []string{uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian},
	}})
	if err != nil {
		return err
	}
	assoc := time.Since(start)
	echoStart := time.Now()
	failed := 0
	for i := 0; i < *count; i++ {
		t := time.Now()
		st, err := c.Echo(ctx)
		if err != nil {
			return fmt.Errorf("C-ECHO %d: %w", i+1, err)
		}
		if !st.IsSuccess() {
			failed++
		}
		if *count == 1 || !st.IsSuccess() {
			fmt.Fprintf(stdout, "C-ECHO to %s (%s): %s in %s\n", *cf.calledAE, *cf.addr, st, time.Since(t).Round(time.Microsecond))
		}
	}
	echoes := time.Since(echoStart)
	if err := c.Release(); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	if *count > 1 {
		fmt.Fprintf(stdout, "%d C-ECHOs to %s (%s) in %s (%s each); association set up in %s; %d failed\n",
			*count, *cf.calledAE, *cf.addr, echoes.Round(time.Microsecond), (echoes / time.Duration(*count)).Round(time.Microsecond), assoc.Round(time.Microsecond), failed)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d C-ECHOs failed", failed, *count)
	}
	return nil
}
