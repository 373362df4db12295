package main

// Source files. Every file is named by a root and a fixed relative path; the
// generator never walks a directory to discover inputs, so the same machine
// state always gives the same corpus. A missing file is a hard error that
// names it.

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"html"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Roots of the source trees.
type Roots struct {
	GoRoot     string // $(go env GOROOT)
	GoVersion  string // first line of $GOROOT/VERSION
	ModCache   string // $(go env GOMODCACHE)
	VimTutor   string // /usr/share/vim/vim*/tutor (highest vim* dir)
	VimDir     string // e.g. "vim90"
	XText      string // $GOMODCACHE/golang.org/x/text@<version>
	XTextMod   string // e.g. "golang.org/x/text@v0.42.0"
	vimPattern string
}

func goEnv(name string) (string, error) {
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", name, err)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("go env %s is empty", name)
	}
	return v, nil
}

// semverLess orders "vMAJOR.MINOR.PATCH" strings numerically; anything else
// falls back to string order.
func semverLess(a, b string) bool {
	pa, oka := parseSemver(a)
	pb, okb := parseSemver(b)
	if !oka || !okb {
		return a < b
	}
	for i := range pa {
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return a < b
}

func parseSemver(v string) ([3]int, bool) {
	var p [3]int
	v = strings.TrimPrefix(v, "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	f := strings.Split(v, ".")
	if len(f) != 3 {
		return p, false
	}
	for i, s := range f {
		n, err := strconv.Atoi(s)
		if err != nil {
			return p, false
		}
		p[i] = n
	}
	return p, true
}

func findRoots(vimGlob string) (*Roots, error) {
	r := &Roots{vimPattern: vimGlob}
	var err error
	if r.GoRoot, err = goEnv("GOROOT"); err != nil {
		return nil, err
	}
	if r.ModCache, err = goEnv("GOMODCACHE"); err != nil {
		return nil, err
	}
	vb, err := os.ReadFile(filepath.Join(r.GoRoot, "VERSION"))
	if err != nil {
		return nil, fmt.Errorf("missing source: %s: %w", filepath.Join(r.GoRoot, "VERSION"), err)
	}
	r.GoVersion = strings.TrimSpace(strings.SplitN(string(vb), "\n", 2)[0])

	dirs, _ := filepath.Glob(filepath.Join(vimGlob, "tutor"))
	sort.Strings(dirs)
	if len(dirs) == 0 {
		return nil, fmt.Errorf("missing source: no vim tutor directory matches %s/tutor (install vim-runtime)", vimGlob)
	}
	r.VimTutor = dirs[len(dirs)-1]
	r.VimDir = filepath.Base(filepath.Dir(r.VimTutor))

	xs, _ := filepath.Glob(filepath.Join(r.ModCache, "golang.org", "x", "text@v*"))
	var versions []string
	for _, x := range xs {
		if _, err := os.Stat(filepath.Join(x, "encoding", "testdata", "candide-utf-8.txt")); err == nil {
			versions = append(versions, strings.TrimPrefix(filepath.Base(x), "text@"))
		}
	}
	if len(versions) == 0 {
		return nil, fmt.Errorf("missing source: no %s/golang.org/x/text@*/encoding/testdata (run: go mod download golang.org/x/text@latest)", r.ModCache)
	}
	sort.Slice(versions, func(i, j int) bool { return semverLess(versions[i], versions[j]) })
	v := versions[len(versions)-1]
	r.XText = filepath.Join(r.ModCache, "golang.org", "x", "text@"+v)
	r.XTextMod = "golang.org/x/text@" + v
	return r, nil
}

// Src names one source file.
type Src struct {
	Root  string // "goroot", "vim", "xtext", "mod" or "man" (/usr/share/man, gzipped pages)
	Path  string // relative to the root; for "mod", "module@version/path"
	Label string // short human label used in "what"
	Xform string // "", "comments" (Go comment text), "html" (tags stripped) or "man" (groff stripped)
	Runes bool   // cut anywhere on a rune boundary (minified files)
}

// ID is the machine-independent name recorded in sources.json.
func (s Src) ID(r *Roots) string {
	switch s.Root {
	case "vim":
		return "vim:" + r.VimDir + "/tutor/" + s.Path
	case "xtext":
		return "gomodcache:" + r.XTextMod + "/" + s.Path
	case "mod":
		return "gomodcache:" + s.Path
	case "goroot":
		return "goroot(" + r.GoVersion + "):" + s.Path
	case "man":
		return "man:" + s.Path
	}
	return s.Root + ":" + s.Path
}

func (s Src) abs(r *Roots) string {
	switch s.Root {
	case "vim":
		return filepath.Join(r.VimTutor, s.Path)
	case "xtext":
		return filepath.Join(r.XText, s.Path)
	case "mod":
		return filepath.Join(r.ModCache, filepath.FromSlash(s.Path))
	case "goroot":
		return filepath.Join(r.GoRoot, filepath.FromSlash(s.Path))
	case "man":
		return filepath.Join("/usr/share/man", filepath.FromSlash(s.Path))
	}
	panic("unknown root " + s.Root)
}

func (s Src) hint() string {
	switch s.Root {
	case "vim":
		return " (install vim-runtime)"
	case "mod":
		return " (run: go mod download " + unescapeModPath(modOf(s.Path)) + ")"
	case "goroot":
		return " (the Go distribution lacks it)"
	case "man":
		return " (install man-db)"
	}
	return ""
}

// modOf returns "module@version" of a "module@version/file" path.
func modOf(p string) string {
	i := strings.Index(p, "@")
	if i < 0 {
		return p
	}
	if j := strings.Index(p[i:], "/"); j >= 0 {
		return p[:i+j]
	}
	return p
}

// unescapeModPath undoes the module cache's case encoding (!a -> A).
func unescapeModPath(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '!' && i+1 < len(p) {
			b.WriteString(strings.ToUpper(p[i+1 : i+2]))
			i++
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// Loaded is a source file's text after its transform.
type Loaded struct {
	Src
	ID     string
	Raw    int    // bytes on disk
	SHA256 string // of the bytes on disk
	Text   string
}

// Loader reads and caches source files and remembers which were used.
type Loader struct {
	roots *Roots
	cache map[string]*Loaded
}

func newLoader(r *Roots) *Loader { return &Loader{roots: r, cache: map[string]*Loaded{}} }

func (l *Loader) Load(s Src) (*Loaded, error) {
	key := s.Root + "\x00" + s.Path + "\x00" + s.Xform
	if f, ok := l.cache[key]; ok {
		return f, nil
	}
	p := s.abs(l.roots)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("missing source %s: %w%s", p, err, s.hint())
	}
	sum := sha256.Sum256(b)
	if strings.HasSuffix(p, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("source %s: %v", p, err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("source %s: %v", p, err)
		}
	}
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("source %s is not valid UTF-8", p)
	}
	text := strings.ReplaceAll(string(b), "\r\n", "\n")
	text = strings.TrimPrefix(text, "\ufeff")
	switch s.Xform {
	case "comments":
		text = goComments(text)
	case "html":
		text = stripHTML(text)
	case "man":
		text = stripGroff(text)
	}
	f := &Loaded{Src: s, ID: s.ID(l.roots), Raw: len(b), SHA256: hex.EncodeToString(sum[:]), Text: text}
	l.cache[key] = f
	return f, nil
}

// Manifest lists every loaded file, sorted by ID.
func (l *Loader) Manifest() []*Loaded {
	var out []*Loaded
	for _, f := range l.cache {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].Xform < out[j].Xform
	})
	return out
}

// goComments keeps the text of // comments of a Go file: the prose of a
// package doc. Runs of code lines become one blank line.
func goComments(src string) string {
	var b strings.Builder
	gap := false
	for line := range strings.SplitSeq(src, "\n") {
		t := strings.TrimSpace(line)
		if !strings.HasPrefix(t, "//") || strings.HasPrefix(t, "//go:") {
			gap = true
			continue
		}
		if gap && b.Len() > 0 {
			b.WriteString("\n")
		}
		gap = false
		t = strings.TrimPrefix(t, "//")
		t = strings.TrimPrefix(t, " ")
		b.WriteString(strings.TrimRight(t, " \t"))
		b.WriteString("\n")
	}
	text := b.String()
	// Drop the licence header block.
	if strings.HasPrefix(text, "Copyright ") {
		if i := strings.Index(text, "\n\n"); i >= 0 {
			text = text[i+2:]
		}
	}
	return text
}

var (
	reTag    = regexp.MustCompile(`(?s)<!--.*?-->|<[^>]*>`)
	reBlank  = regexp.MustCompile(`\n[ \t]*\n(?:[ \t]*\n)+`)
	reTrailW = regexp.MustCompile(`[ \t]+\n`)
)

var (
	reGroffMacro = regexp.MustCompile(`^\.(?:B|I|BR|IR|RB|RI|BI|IB|SM|SB|SH|SS|TP|IP|HP|TH)\b ?`)
	reGroffEsc   = regexp.MustCompile(`\\f[BIPR]|\\f\(..|\\[|&^]|\\\*\(..|\\\*.|\\\(..`)
)

// stripGroff turns a man page's groff source into its text: macro lines
// keep their arguments, other requests and comments go, and escapes become
// what they print (or nothing).
func stripGroff(src string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(src, "\n") {
		if strings.HasPrefix(line, ".\\\"") || strings.HasPrefix(line, "'\\\"") {
			continue
		}
		if strings.HasPrefix(line, ".") {
			m := reGroffMacro.FindString(line)
			if m == "" {
				continue
			}
			line = strings.ReplaceAll(line[len(m):], "\"", "")
		}
		line = strings.NewReplacer(`\-`, "-", `\e`, `\`, `\(aq`, "'", `\(em`, "—", `\(en`, "–",
			`\(lq`, "“", `\(rq`, "”", `\ `, " ").Replace(line)
		line = reGroffEsc.ReplaceAllString(line, "")
		b.WriteString(line)
		b.WriteString("\n")
	}
	return reBlank.ReplaceAllString(b.String(), "\n\n")
}

// stripHTML turns an HTML page into its visible text.
func stripHTML(src string) string {
	t := reTag.ReplaceAllString(src, "")
	t = html.UnescapeString(t)
	t = reTrailW.ReplaceAllString(t, "\n")
	t = reBlank.ReplaceAllString(t, "\n\n")
	return strings.TrimSpace(t) + "\n"
}
