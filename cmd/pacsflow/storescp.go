package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

func runStoreSCP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("storescp --dir DIR [flags]",
		"Receives DICOM instances over C-STORE (and answers C-ECHO) and writes each into DIR as a\n"+
			"Part 10 file named <SOPInstanceUID>.dcm: a file meta header built from the association,\n"+
			"then the data set exactly as received, in the transfer syntax the sender chose.\n"+
			"Files appear under their final name only once complete (written to a temporary name, then renamed).", stderr)
	dir := fs.String("dir", "", "folder to write received instances into (required; created if missing)")
	fsync := fs.Bool("fsync", false, "fsync each file and the folder before answering Success (slower, survives power loss)")
	lf := addListenerFlags(fs, "addr")
	level, format := logFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level, *format)
	if err != nil {
		return err
	}
	if *dir == "" {
		fs.Usage()
		return errUsage
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", *dir, err)
	}
	store := &dirStore{dir: *dir, fsync: *fsync}
	cfg, err := lf.serverConfig(store)
	if err != nil {
		return err
	}
	cfg.Logger = log
	srv, err := dimse.NewServer(cfg)
	if err != nil {
		return err
	}
	lns, err := lf.listen(stdout)
	if err != nil {
		return err
	}
	return serveDICOM(ctx, srv, lns, log)
}

// dirStore writes each received instance as a Part 10 file.
type dirStore struct {
	dir   string
	fsync bool
}

func (d *dirStore) HandleStore(ctx context.Context, req *dimse.StoreIndication, data io.Reader) (dimse.Result, error) {
	if err := uid.Validate(req.AffectedSOPInstanceUID); err != nil {
		return dimse.Result{}, dimse.Fail(dimse.StatusCannotUnderstand, fmt.Errorf("affected SOP instance UID: %w", err))
	}
	f, err := os.CreateTemp(d.dir, ".incoming-*")
	if err != nil {
		return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, err)
	}
	tmp := f.Name()
	err = d.write(f, req, data)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = dimse.Fail(dimse.StatusOutOfResources, cerr)
	}
	if err == nil {
		err = d.commit(tmp, filepath.Join(d.dir, req.AffectedSOPInstanceUID+".dcm"))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return dimse.Result{}, err
	}
	return dimse.Result{Status: dimse.StatusSuccess}, nil
}

// commit gives a complete file its final name.
func (d *dirStore) commit(tmp, final string) error {
	if err := os.Rename(tmp, final); err != nil {
		return dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if d.fsync {
		if err := syncDir(d.dir); err != nil {
			return dimse.Fail(dimse.StatusOutOfResources, err)
		}
	}
	return nil
}

func (d *dirStore) write(f *os.File, req *dimse.StoreIndication, data io.Reader) error {
	hdr := part10.AppendHeader(nil, &part10.Meta{
		MediaStorageSOPClassUID:      req.AffectedSOPClassUID,
		MediaStorageSOPInstanceUID:   req.AffectedSOPInstanceUID,
		TransferSyntaxUID:            req.TransferSyntaxUID,
		ImplementationClassUID:       uid.ImplementationClassUID,
		ImplementationVersionName:    uid.ImplementationVersionName,
		SourceApplicationEntityTitle: req.Association.CallingAE,
	})
	// CreateTemp makes the file private; received instances are ordinary files.
	if err := f.Chmod(0o644); err != nil {
		return dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if _, err := f.Write(hdr); err != nil {
		return dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if _, err := io.Copy(chunkedWriter{f}, data); err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return dimse.Fail(dimse.StatusOutOfResources, err)
		}
		return fmt.Errorf("receive data set: %w", err)
	}
	if d.fsync {
		if err := f.Sync(); err != nil {
			return dimse.Fail(dimse.StatusOutOfResources, err)
		}
	}
	return nil
}

// chunkedWriter writes to a file in pieces of at most 64 KiB. Measured on
// the large corpus (bench/), whole 256 KiB fragments written at once ran at
// 700-1600 MB/s, varying from run to run, and the same data in 64 KiB
// writes at a steady 1600-1800 MB/s: each piece is copied into the page
// cache while it is still in the CPU cache.
type chunkedWriter struct{ w io.Writer }

func (c chunkedWriter) Write(p []byte) (int, error) {
	const chunk = 64 << 10
	n := 0
	for len(p) > 0 {
		m, err := c.w.Write(p[:min(len(p), chunk)])
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
