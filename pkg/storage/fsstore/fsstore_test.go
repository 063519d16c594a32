package fsstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/storagetest"
)

func newStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = t.TempDir()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSuite(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		// adjust forces the fallbacks that this machine's filesystem does
		// not need.
		adjust func(*Store)
	}{
		{name: "default"},
		{name: "sync", cfg: Config{Sync: true}},
		{name: "sidecar", adjust: func(s *Store) { s.xattr = false }},
		{name: "link-rename", adjust: func(s *Store) { s.linkRename = true }},
		{name: "sidecar-link-rename-sync", cfg: Config{Sync: true}, adjust: func(s *Store) { s.xattr, s.linkRename = false, true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storagetest.Run(t, func(t *testing.T) storage.Store {
				s := newStore(t, tc.cfg)
				if tc.adjust != nil {
					tc.adjust(s)
				}
				t.Cleanup(func() { checkClean(t, s) })
				return s
			})
		})
	}
}

// checkClean fails t if a temporary or an empty folder was left behind.
func checkClean(t *testing.T, s *Store) {
	t.Helper()
	tmps, err := os.ReadDir(s.tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tmps {
		t.Errorf("temporary %s left behind", e.Name())
	}
	err = filepath.WalkDir(s.root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() || path == s.root || path == s.tmp {
			return err
		}
		ents, err := os.ReadDir(path)
		if err == nil && len(ents) == 0 {
			t.Errorf("empty folder %s left behind", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestProbe: New finds what the filesystem of the test's temporary folder
// supports, as a direct try tells.
func TestProbe(t *testing.T) {
	s := newStore(t, Config{})
	t.Logf("xattr %v, link-rename %v", s.xattr, s.linkRename)
	name := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(name, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := unix.Setxattr(name, "user.test", []byte("x"), 0)
	if err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Fatal(err)
	}
	if s.xattr != (err == nil) {
		t.Errorf("probe found xattr %v, but setting one gave %v", s.xattr, err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, name, unix.AT_FDCWD, name+"2", unix.RENAME_NOREPLACE)
	if s.linkRename != (err != nil) {
		t.Errorf("probe found link-rename %v, but renameat2 gave %v", s.linkRename, err)
	}
}

func TestDigestRecord(t *testing.T) {
	ctx := t.Context()
	data := []byte("some bytes")
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])

	t.Run("xattr", func(t *testing.T) {
		s := newStore(t, Config{})
		if _, err := s.Put(ctx, "a/b", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 128)
		n, err := unix.Getxattr(filepath.Join(s.root, "a", "b"), xattrName, buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("%s = %q, %v; want %s", xattrName, buf[:n], err, want)
		}
		if _, err := os.Stat(filepath.Join(s.root, "a", "b"+sidecarSuffix)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("sidecar next to an object with an extended attribute: %v", err)
		}
		// A copy that lost its attributes still has the right digest.
		if err := unix.Removexattr(filepath.Join(s.root, "a", "b"), xattrName); err != nil {
			t.Fatal(err)
		}
		obj, err := s.Stat(ctx, "a/b")
		if err != nil || obj.SHA256 != want {
			t.Fatalf("Stat without a record = %+v, %v; want sha256 %s", obj, err, want)
		}
		// A record that is not a digest is an error, not a digest.
		if err := unix.Setxattr(filepath.Join(s.root, "a", "b"), xattrName, []byte("nonsense"), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, "a/b"); err == nil || !strings.Contains(err.Error(), "corrupt digest record") {
			t.Fatalf("Stat with a corrupt record = %v", err)
		}
	})

	t.Run("sidecar", func(t *testing.T) {
		s := newStore(t, Config{})
		s.xattr = false
		if _, err := s.Put(ctx, "a/b", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(s.root, "a", "b"+sidecarSuffix))
		if err != nil || string(b) != want+"\n" {
			t.Fatalf("sidecar = %q, %v; want %s", b, err, want)
		}
		if err := s.Delete(ctx, "a/b"); err != nil {
			t.Fatal(err)
		}
		checkClean(t, s)
		if ents, _ := os.ReadDir(s.root); len(ents) != 1 {
			t.Errorf("after Delete the root holds %v", ents)
		}
	})
}

func TestLeftoversRemovedAtNew(t *testing.T) {
	root := t.TempDir()
	s := newStore(t, Config{Root: root})
	if _, err := s.Put(t.Context(), "kept", strings.NewReader("object")); err != nil {
		t.Fatal(err)
	}
	// What a crash leaves: temporaries, and folders of them.
	for _, name := range []string{"put-123", "sha256-456", "put-789-renamed"} {
		if err := os.WriteFile(filepath.Join(s.tmp, name), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(s.tmp, "odd", "deeper"), 0o700); err != nil {
		t.Fatal(err)
	}
	s = newStore(t, Config{Root: root})
	checkClean(t, s)
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{tmpDirName, "kept"}) {
		t.Errorf("root holds %v after New", names)
	}
	if _, err := s.Stat(t.Context(), "kept"); err != nil {
		t.Errorf("object gone after New: %v", err)
	}
}

// TestKeyFolderConflict: a key cannot name a folder of other keys, nor go
// through an object as if it were a folder.
func TestKeyFolderConflict(t *testing.T) {
	ctx := t.Context()
	s := newStore(t, Config{})
	for _, k := range []string{"a/b", "x/y/z"} {
		if _, err := s.Put(ctx, k, strings.NewReader(k)); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"a/b/c", "x/y"} {
		if _, err := s.Put(ctx, k, strings.NewReader(k)); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Put(%s) = %v, want ErrInvalidKey", k, err)
		}
		if _, err := s.Stat(ctx, k); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Stat(%s) = %v, want ErrNotFound", k, err)
		}
		if err := s.Delete(ctx, k); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Delete(%s) = %v, want ErrNotFound", k, err)
		}
	}
	checkClean(t, s)
}

// TestDiskFull fills a 2 MiB tmpfs: Put fails with ErrFull and leaves
// neither object nor temporary.
func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			t.Skipf("SKIPPED, disk-full handling NOT TESTED: mounting a tmpfs needs privileges (CAP_SYS_ADMIN) this test lacks: %v", err)
		}
		t.Fatalf("mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	for _, sync := range []bool{false, true} {
		s := newStore(t, Config{Root: dir, Sync: sync})
		sp, err := s.Space(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if sp.Total != 2<<20 || sp.Free > sp.Total {
			t.Errorf("Space = %+v on a 2 MiB tmpfs", sp)
		}
		k := "1.2.3/1.2.3.4/1.2.3.4.5/v1"
		_, err = s.Put(t.Context(), k, io.LimitReader(zeros{}, 3<<20))
		if !errors.Is(err, storage.ErrFull) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Put of 3 MiB on 2 MiB = %v, want ErrFull wrapping ENOSPC", err)
		}
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error %q does not name the key", err)
		}
		if _, err := s.Stat(t.Context(), k); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Stat after a failed Put = %v", err)
		}
		checkClean(t, s)
		// The space is back: a small object fits.
		if _, err := s.Put(t.Context(), k, strings.NewReader("small")); err != nil {
			t.Fatalf("small Put after the failed one: %v", err)
		}
		if err := s.Delete(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func BenchmarkPut(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(map[bool]string{false: "sync=off", true: "sync=on"}[sync], func(b *testing.B) {
			storagetest.BenchmarkPut(b, newStoreB(b, Config{Root: b.TempDir(), Sync: sync}))
		})
	}
}

func newStoreB(b *testing.B, cfg Config) *Store {
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// TestLostRace: of two Puts that both find the key free, the one that
// renames second gets ErrExists and leaves no temporary.
func TestLostRace(t *testing.T) {
	for _, link := range []bool{false, true} {
		t.Run(map[bool]string{false: "renameat2", true: "link"}[link], func(t *testing.T) {
			ctx := t.Context()
			s := newStore(t, Config{})
			s.linkRename = link
			slow := &storagetest.GatedReader{
				First:   bytes.NewReader(bytes.Repeat([]byte("a"), 200<<10)),
				Rest:    bytes.NewReader(bytes.Repeat([]byte("b"), 100<<10)),
				Drained: make(chan struct{}), Gate: make(chan struct{}),
			}
			read := slow.Drained
			done := make(chan error, 1)
			go func() {
				_, err := s.Put(ctx, "a/k", slow)
				done <- err
			}()
			<-read // the slow Put has found the key free
			fast := []byte("the winner")
			if _, err := s.Put(ctx, "a/k", bytes.NewReader(fast)); err != nil {
				t.Fatalf("fast Put: %v", err)
			}
			close(slow.Gate)
			if err := <-done; !errors.Is(err, storage.ErrExists) {
				t.Fatalf("slow Put = %v, want ErrExists", err)
			}
			got, err := os.ReadFile(filepath.Join(s.root, "a", "k"))
			if err != nil || !bytes.Equal(got, fast) {
				t.Fatalf("object is %q, %v; want the winner's", got, err)
			}
			checkClean(t, s)
		})
	}
}

// TestPutDeleteChurn: Puts and Deletes in the same folders, where each
// Delete prunes the folders it empties, never fail each other.
func TestPutDeleteChurn(t *testing.T) {
	const workers, rounds = 4, 300
	s := newStore(t, Config{})
	ctx := t.Context()
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				k := "s/x/" + strconv.Itoa(w) + "-" + strconv.Itoa(i) + "/v1"
				if _, err := s.Put(ctx, k, strings.NewReader(k)); err != nil {
					errs <- err
					return
				}
				if err := s.Delete(ctx, k); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkClean(t, s)
}
