package model

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// modelServices are the services that run the model; every other service must build with
// CGO_ENABLED=0, so that ingest and notify ship as static binaries without TensorFlow.
var modelServices = map[string]bool{"understand": true, "generate": true}

func TestCgoStaysInModelServices(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	dirs, err := filepath.Glob(filepath.Join(root, "services", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var pkgs []string
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() && !modelServices[filepath.Base(d)] {
			pkgs = append(pkgs, "./services/"+filepath.Base(d)+"/...")
		}
	}
	if len(pkgs) == 0 {
		t.Fatal("no services found")
	}
	cmd := exec.Command("go", append([]string{"build", "-o", os.DevNull}, pkgs...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build %s: %v\n%s", strings.Join(pkgs, " "), err, out)
	}
	list := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...)
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/wamuir/graft") || dep == "github.com/pacsflow/pacsflow/pkg/model" {
			t.Errorf("%s depends on %s", strings.Join(pkgs, " "), dep)
		}
	}
}
