// Command caddy is Caddy with the standard modules, llm_ratelimit and
// mholt/caddy-ratelimit (whose rate_limit the example uses to make its mock
// upstream answer real 429s). `go run ./cmd/caddy run --config
// example.Caddyfile` runs the example offline.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/llmgate/caddy-llm-ratelimit"
	_ "github.com/mholt/caddy-ratelimit"
)

func main() {
	caddycmd.Main()
}
