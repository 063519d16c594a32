package gen

import (
	"cmp"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// typeDocs are the doc comments of a struct type, as schema descriptions.
type typeDocs struct {
	doc    string
	fields map[string]string // by Go field name
}

// parseDocs reads the doc comments of the struct types declared in the Go
// files of dir (tests excluded), by type name. Each comment is flattened to
// one line, and the Go names of the struct's fields in it become their JSON
// names (NumSeries becomes num_series), since the reader of a schema knows
// only those.
//
// A field without a comment takes the comment of the nearest commented
// field before it if that comment names it: in
//
//	// NumSeries, NumInstances and Bytes count the whole study.
//	NumSeries    int
//	NumInstances int
//	Bytes        int64
//
// the comment describes all three.
func parseDocs(dir string) (map[string]typeDocs, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	out := map[string]typeDocs{}
	fset := token.NewFileSet()
	for _, path := range paths {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				doc := ts.Doc
				if doc == nil && !gd.Lparen.IsValid() {
					doc = gd.Doc
				}
				td, err := structDocs(doc, st)
				if err != nil {
					return nil, fmt.Errorf("%s: type %s: %w", path, ts.Name.Name, err)
				}
				out[ts.Name.Name] = td
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no struct types in %s: it must be the folder of package events", dir)
	}
	return out, nil
}

func structDocs(doc *ast.CommentGroup, st *ast.StructType) (typeDocs, error) {
	td := typeDocs{fields: map[string]string{}}
	jsonNames := map[string]string{} // by Go name
	var group string                 // the comment of the nearest commented field
	for _, f := range st.Fields.List {
		tagName, err := fieldTagName(f)
		if err != nil {
			return td, err
		}
		c := f.Doc
		if c == nil {
			c = f.Comment
		}
		if c != nil {
			group = text(c)
		}
		for _, n := range f.Names {
			jsonNames[n.Name] = cmp.Or(tagName, n.Name)
			if c != nil || slices.Contains(wordRE.FindAllString(group, -1), n.Name) {
				td.fields[n.Name] = group
			}
		}
	}
	rename := func(s string) string {
		return wordRE.ReplaceAllStringFunc(s, func(w string) string { return cmp.Or(jsonNames[w], w) })
	}
	for n, d := range td.fields {
		td.fields[n] = rename(d)
	}
	td.doc = rename(text(doc))
	return td, nil
}

// fieldTagName is the name a field's json tag gives, "" if none.
func fieldTagName(f *ast.Field) (string, error) {
	if f.Tag == nil {
		return "", nil
	}
	tag, err := strconv.Unquote(f.Tag.Value)
	if err != nil {
		return "", err
	}
	name, _, _ := strings.Cut(reflect.StructTag(tag).Get("json"), ",")
	return name, nil
}

// wordRE finds the words of a comment that may name a Go field.
var wordRE = regexp.MustCompile(`\b[A-Za-z][A-Za-z0-9]*\b`)

// text flattens a comment to one line.
func text(c *ast.CommentGroup) string {
	if c == nil {
		return ""
	}
	return strings.Join(strings.Fields(c.Text()), " ")
}
