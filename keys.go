package llmratelimit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// keyHash is the sha256 of an API key. The raw key is never stored; the
// handler holds, logs and shows only keyHash.id().
type keyHash [sha256.Size]byte

func hashKey(key string) keyHash {
	var buf [256]byte
	if len(key) <= len(buf) {
		return sha256.Sum256(append(buf[:0], key...)) // no allocation
	}
	return sha256.Sum256([]byte(key))
}

// keyPrefix is the first half of a keyHash: what the zones key their maps
// by (128 bits do not collide), half the memory of the whole hash.
type keyPrefix [16]byte

func (k keyHash) prefix() keyPrefix { return keyPrefix(k[:16]) }

// id is the key_id: the first 12 hex characters of sha256(key).
func (k keyPrefix) id() string { return hex.EncodeToString(k[:6]) }

// id is the key_id: the first 12 hex characters of sha256(key).
func (k keyHash) id() string { return k.prefix().id() }

// parseKeySpec reads an api_key / keys_file key: a raw key or
// "sha256:<64 hex digits>".
func parseKeySpec(s string) (keyHash, error) {
	var kh keyHash
	if hexPart, ok := strings.CutPrefix(s, "sha256:"); ok {
		b, err := hex.DecodeString(hexPart)
		if err != nil || len(b) != sha256.Size {
			return kh, fmt.Errorf("sha256: key must be 64 hex digits")
		}
		copy(kh[:], b)
		return kh, nil
	}
	if s == "" {
		return kh, fmt.Errorf("empty key")
	}
	return hashKey(s), nil
}

type keyEntry struct {
	hash keyHash
	tier string
}

// readKeysFile reads "<key|sha256:hex> <tier>" lines. Blank lines and
// everything from # to the end of a line are ignored. Errors name the line,
// never the key.
func readKeysFile(path string) ([]keyEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseKeys(f.Name(), bufio.NewScanner(f))
}

// parseKeysBytes is parseKeys of a keys file's content.
func parseKeysBytes(name string, content []byte) ([]keyEntry, error) {
	return parseKeys(name, bufio.NewScanner(bytes.NewReader(content)))
}

func parseKeys(name string, sc *bufio.Scanner) ([]keyEntry, error) {
	var out []keyEntry
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return nil, fmt.Errorf("%s:%d: want \"<key> <tier>\", got %d fields", name, line, len(fields))
		}
		kh, err := parseKeySpec(fields[0])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", name, line, err)
		}
		out = append(out, keyEntry{hash: kh, tier: fields[1]})
	}
	return out, sc.Err()
}
