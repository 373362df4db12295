package main

// The kinds of text and where each one comes from. Order matters: it fixes
// the shape rotation and the numbering, so append new kinds at the end.

import "fmt"

var kinds = []string{
	"english_prose",
	"latin_prose",
	"cyrillic",
	"greek",
	"korean",
	"japanese",
	"chinese_simplified",
	"chinese_traditional_classical",
	"vietnamese",
	"base64",
	"hex_uuid",
	"digits_csv",
	"log_lines",
	"json_in_string",
	"html_markdown",
	"code_go",
	"code_c",
	"code_js",
	"code_python_or_shell_or_rust",
	"code_asm",
	"letter_runs",
	"mixed",
}

func tutor(lang, label string) Src {
	return Src{Root: "vim", Path: "tutor." + lang + ".utf-8", Label: "vim tutor " + label}
}

func goroot(path, label string) Src { return Src{Root: "goroot", Path: path, Label: label} }

func mod(path, label string) Src { return Src{Root: "mod", Path: path, Label: label} }

func xtext(name, label string) Src {
	return Src{Root: "xtext", Path: "encoding/testdata/" + name + "-utf-8.txt", Label: label}
}

const (
	caddyMod   = "github.com/caddyserver/caddy/v2@v2.11.9/"
	gatewayMod = "github.com/grpc-ecosystem/grpc-gateway/v2@v2.30.0/"
	webhookMod = "github.com/standard-webhooks/standard-webhooks/libraries@v0.0.1/"
)

// fileSources lists the fixed files of each file-backed kind.
var fileSources = map[string][]Src{
	"english_prose": {
		{Root: "vim", Path: "tutor.utf-8", Label: "vim tutor (English)"},
		{Root: "goroot", Path: "src/cmd/go/alldocs.go", Label: "go command documentation", Xform: "comments"},
		{Root: "goroot", Path: "src/fmt/doc.go", Label: "fmt package documentation", Xform: "comments"},
		{Root: "goroot", Path: "src/sync/atomic/doc.go", Label: "sync/atomic documentation", Xform: "comments"},
		{Root: "goroot", Path: "src/runtime/mgc.go", Label: "runtime GC comments", Xform: "comments"},
		{Root: "goroot", Path: "doc/go_mem.html", Label: "The Go Memory Model (text)", Xform: "html"},
		mod(caddyMod+"LICENSE", "Apache License 2.0"),
	},
	"latin_prose": {
		tutor("fr", "French"), tutor("de", "German"), tutor("es", "Spanish"), tutor("it", "Italian"),
		tutor("pl", "Polish"), tutor("cs", "Czech"), tutor("hu", "Hungarian"), tutor("eo", "Esperanto"),
		tutor("nl", "Dutch"), tutor("da", "Danish"), tutor("nb", "Norwegian Bokmål"), tutor("sv", "Swedish"),
		tutor("pt", "Portuguese"), tutor("hr", "Croatian"), tutor("sr", "Serbian (Latin)"), tutor("lv", "Latvian"),
		tutor("sk", "Slovak"), tutor("tr", "Turkish"), tutor("ca", "Catalan"),
		xtext("candide", "Candide (French)"),
	},
	"cyrillic": {
		tutor("ru", "Russian"), tutor("uk", "Ukrainian"), tutor("bg", "Bulgarian"),
	},
	"greek": {
		tutor("el", "Greek"),
	},
	"korean": {
		tutor("ko", "Korean"), xtext("unsu-joh-eun-nal", "Unsu joh-eun nal (Korean)"),
	},
	"japanese": {
		tutor("ja", "Japanese"), xtext("rashomon", "Rashomon (Japanese)"),
	},
	"chinese_simplified": {
		tutor("zh_cn", "Simplified Chinese"), xtext("sunzi-bingfa-simplified", "Sunzi Bingfa (classical, simplified script)"),
	},
	"chinese_traditional_classical": {
		xtext("sunzi-bingfa-traditional", "Sunzi Bingfa (classical, traditional script)"),
		tutor("zh_tw", "Traditional Chinese"),
	},
	"vietnamese": {
		tutor("vi", "Vietnamese"),
	},
	"log_lines": {
		mod("golang.org/x/exp@v0.0.0-20260908205506-85c1c2202aba/shootout/timing.log", "x/exp shootout timing.log"),
	},
	"json_in_string": {
		mod(gatewayMod+"examples/internal/proto/examplepb/echo_service.swagger.json", "grpc-gateway echo_service.swagger.json"),
		mod(gatewayMod+"examples/internal/helloworld/helloworld.openapi.json", "grpc-gateway helloworld.openapi.json"),
		mod("github.com/dunglas/go-urlpattern@v1.0.0/testdata/urlpatterntestdata.json", "urlpattern test data"),
		mod("github.com/yuin/goldmark@v1.8.6/_test/spec.json", "CommonMark spec examples"),
		mod("github.com/anthropics/anthropic-sdk-go@v1.84.0/internal/telemetry/testdata/content_size_bound.json", "anthropic-sdk-go telemetry test data"),
		goroot("src/crypto/hpke/testdata/rfc9180.json", "RFC 9180 test vectors"),
		goroot("src/cmd/vendor/golang.org/x/arch/arm64/arm64asm/inst.json", "arm64 instruction table"),
	},
	"html_markdown": {
		goroot("doc/go_spec.html", "Go spec (HTML)"),
		goroot("doc/go_mem.html", "Go memory model (HTML)"),
		goroot("doc/asm.html", "Go assembler guide (HTML)"),
		goroot("doc/godebug.md", "godebug.md"),
		goroot("src/runtime/HACKING.md", "runtime HACKING.md"),
		goroot("src/cmd/compile/abi-internal.md", "abi-internal.md"),
		mod(caddyMod+"README.md", "Caddy README.md"),
		mod("github.com/openai/openai-go/v3@v3.98.0/README.md", "openai-go README.md"),
		mod("github.com/klauspost/compress@v1.20.1/README.md", "klauspost/compress README.md"),
		mod("github.com/anthropics/anthropic-sdk-go@v1.84.0/tools.md", "anthropic-sdk-go tools.md"),
	},
	"code_go": {
		goroot("src/net/http/server.go", "net/http/server.go"),
		goroot("src/encoding/json/decode.go", "encoding/json/decode.go"),
		goroot("src/strings/strings.go", "strings/strings.go"),
		goroot("src/sort/sort.go", "sort/sort.go"),
		goroot("src/bufio/bufio.go", "bufio/bufio.go"),
		goroot("src/time/format.go", "time/format.go"),
		goroot("src/runtime/chan.go", "runtime/chan.go"),
		goroot("src/container/heap/heap.go", "container/heap/heap.go"),
		goroot("src/sync/mutex.go", "sync/mutex.go"),
		mod(caddyMod+"caddy.go", "caddy.go"),
	},
	"code_c": {
		goroot("src/regexp/testdata/testregex.c", "regexp testregex.c"),
		goroot("src/runtime/cgo/gcc_libinit.c", "runtime/cgo gcc_libinit.c"),
		goroot("src/runtime/cgo/gcc_libinit_windows.c", "runtime/cgo gcc_libinit_windows.c"),
		goroot("src/runtime/cgo/gcc_signal_ios_arm64.c", "runtime/cgo gcc_signal_ios_arm64.c"),
		goroot("src/runtime/cgo/gcc_linux_amd64.c", "runtime/cgo gcc_linux_amd64.c"),
		goroot("src/runtime/cgo/gcc_darwin_arm64.c", "runtime/cgo gcc_darwin_arm64.c"),
		goroot("src/runtime/cgo/gcc_sigaction.c", "runtime/cgo gcc_sigaction.c"),
		goroot("src/runtime/cgo/libcgo.h", "runtime/cgo libcgo.h"),
		goroot("src/cmd/cgo/internal/testcarchive/testdata/main2.c", "cgo testcarchive main2.c"),
		goroot("src/cmd/cgo/internal/testcarchive/testdata/main4.c", "cgo testcarchive main4.c"),
	},
	"code_js": {
		goroot("lib/wasm/wasm_exec.js", "wasm_exec.js"),
		goroot("src/cmd/vendor/github.com/google/pprof/internal/driver/html/common.js", "pprof common.js"),
		goroot("src/cmd/vendor/github.com/google/pprof/internal/driver/html/stacks.js", "pprof stacks.js"),
		goroot("src/cmd/vendor/github.com/google/pprof/third_party/svgpan/svgpan.js", "svgpan.js"),
		mod(gatewayMod+"examples/internal/browser/gulpfile.js", "grpc-gateway gulpfile.js"),
		mod(gatewayMod+"examples/internal/browser/a_bit_of_everything_service.spec.js", "grpc-gateway spec.js"),
		mod(caddyMod+".github/scripts/release-proposal.js", "caddy release-proposal.js"),
		mod(webhookMod+"javascript/src/index.ts", "standard-webhooks index.ts"),
		mod(webhookMod+"javascript/src/webhook.test.ts", "standard-webhooks webhook.test.ts"),
		{Root: "mod", Path: caddyMod + "modules/caddyhttp/encode/testdata/caddy_asciinema_player.js", Label: "asciinema player (minified JS)", Runes: true},
	},
	"code_python_or_shell_or_rust": {
		goroot("src/runtime/runtime-gdb.py", "runtime-gdb.py"),
		goroot("lib/hg/goreposum.py", "goreposum.py"),
		goroot("src/make.bash", "make.bash"),
		goroot("src/syscall/mkerrors.sh", "syscall/mkerrors.sh"),
		goroot("src/syscall/mkall.sh", "syscall/mkall.sh"),
		goroot("src/bootstrap.bash", "bootstrap.bash"),
		mod(webhookMod+"rust/src/lib.rs", "standard-webhooks lib.rs"),
		mod(webhookMod+"python/standardwebhooks/webhooks.py", "standard-webhooks webhooks.py"),
		mod(webhookMod+"python/tests/test_webhooks.py", "standard-webhooks test_webhooks.py"),
		mod("github.com/alecthomas/chroma/v2@v2.27.0/_tools/pygments2chroma_xml.py", "chroma pygments2chroma_xml.py"),
	},
	"code_asm": {
		goroot("src/runtime/asm_amd64.s", "runtime/asm_amd64.s"),
		goroot("src/runtime/asm_arm64.s", "runtime/asm_arm64.s"),
		goroot("src/runtime/memmove_amd64.s", "runtime/memmove_amd64.s"),
		goroot("src/runtime/sys_linux_amd64.s", "runtime/sys_linux_amd64.s"),
		goroot("src/math/big/arith_amd64.s", "math/big/arith_amd64.s"),
	},
}

func loadAll(l *Loader, srcs []Src) ([]*Loaded, error) {
	var out []*Loaded
	for _, s := range srcs {
		f, err := l.Load(s)
		if err != nil {
			return nil, err
		}
		if len(f.Text) < 100 {
			return nil, fmt.Errorf("source %s has too little text (%d bytes)", f.ID, len(f.Text))
		}
		out = append(out, f)
	}
	return out, nil
}

// synthGens are the kinds whose text only a synthetic generator makes.
var synthGens = map[string]Gen{
	"base64":      genBase64,
	"hex_uuid":    genHex,
	"digits_csv":  genDigits,
	"letter_runs": genLetters,
}

// providers builds the text provider of every kind.
func providers(l *Loader) (map[string]Provider, error) {
	ps := map[string]Provider{}
	for _, k := range kinds {
		fs, err := loadAll(l, fileSources[k])
		if err != nil {
			return nil, err
		}
		var p Provider
		switch {
		case synthGens[k] != nil:
			p = &SynthProvider{Gens: []Gen{synthGens[k]}, Lines: true}
		case k == "log_lines":
			p = &Weighted{Weights: []int{4, 1}, Ps: []Provider{&SynthProvider{Gens: []Gen{genLogs}, Lines: true}, &FileProvider{Files: fs}}}
		case k == "json_in_string":
			p = &JSONProvider{Files: fs}
		case k == "mixed":
			m := &MixedProvider{}
			for _, o := range kinds {
				if o != "mixed" {
					m.Kinds = append(m.Kinds, o)
					m.Ps = append(m.Ps, ps[o])
				}
			}
			p = m
		case len(fs) == 0:
			return nil, fmt.Errorf("kind %s has no sources", k)
		default:
			p = &FileProvider{Files: fs}
		}
		ps[k] = p
	}
	return ps, nil
}
