// Command schemagen writes the JSON Schema of the data of every event type
// of pacsflow's contract (events.Definitions) to the folder schemas/ of the
// module, as package gen builds them from the Go types and their doc
// comments. Run it from anywhere in the module after changing the types:
//
//	go run ./pkg/events/internal/schemagen
//
// or go generate ./pkg/events.
//
// It rewrites schemas/<type>.schema.json and deletes the schema files of
// types no longer defined. It never touches schemas/released/, the frozen
// copies that the compatibility test compares against.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/pacsflow/pacsflow/pkg/events/internal/schemagen/gen"
	"github.com/pacsflow/pacsflow/schemas"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("schemagen: ")
	root, err := moduleRoot()
	if err != nil {
		log.Fatal(err)
	}
	files, err := gen.Files(filepath.Join(root, "pkg", "events"))
	if err != nil {
		log.Fatal(err)
	}
	dir := filepath.Join(root, "schemas")
	for name, b := range files {
		path := filepath.Join(dir, name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
			continue
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Println("wrote", path)
	}
	stale, err := filepath.Glob(filepath.Join(dir, schemas.File("*")))
	if err != nil {
		log.Fatal(err)
	}
	for _, path := range stale {
		if _, ok := files[filepath.Base(path)]; ok {
			continue
		}
		if err := os.Remove(path); err != nil {
			log.Fatal(err)
		}
		fmt.Println("removed", path)
	}
}

// moduleRoot is the nearest folder at or above the working directory that
// holds go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside a Go module: run it in the pacsflow repository")
		}
		dir = parent
	}
}
