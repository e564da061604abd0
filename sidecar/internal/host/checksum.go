package host

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// checksums decides the SHA-256 each plugin binary must have. With a
// SHA256SUMS file in the plugins directory, that file is the only source;
// without one, a binary's hash is pinned the first time it is loaded, so a
// binary replaced while the sidecar runs is refused.
type checksums struct {
	mu     sync.Mutex
	listed map[string][]byte // file name -> hash, from SHA256SUMS; nil when absent
	pinned map[string][]byte // file name -> hash pinned at first load
}

func loadChecksums(dir string) (*checksums, error) {
	c := &checksums{pinned: map[string][]byte{}}
	path := filepath.Join(dir, SumsFile)
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	c.listed, err = parseSums(path, data)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// parseSums reads sha256sum output: "<hex>  <name>" or "<hex> *<name>".
func parseSums(path string, data []byte) (map[string][]byte, error) {
	out := map[string][]byte{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		hexSum, name, ok := strings.Cut(line, " ")
		name = strings.TrimPrefix(strings.TrimLeft(name, " "), "*")
		sum, err := hex.DecodeString(hexSum)
		if !ok || err != nil || len(sum) != sha256.Size || name == "" || strings.ContainsRune(name, '/') {
			return nil, fmt.Errorf("%s line %d: want \"<64 hex digits>  <file name>\" as sha256sum writes it, got %q", path, n, line)
		}
		out[name] = sum
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}

// expected returns the hash path must have, pinning it on first use when no
// SHA256SUMS file exists.
func (c *checksums) expected(strategy, path string) ([]byte, error) {
	return c.decide(strategy, path, nil)
}

// decide returns the hash path must have for a caller that first saw the
// hash want (nil: none). SHA256SUMS decides when it exists (want is not
// checked against it). Without it, the hash pinned here decides, and a want
// that differs from it is refused (RefusedPinConflict); with none pinned yet,
// want is pinned, or, when want is nil, the binary's own hash.
func (c *checksums) decide(strategy, path string, want []byte) ([]byte, error) {
	name := filepath.Base(path)
	if c.listed != nil {
		sum, ok := c.listed[name]
		if !ok {
			return nil, &Refusal{Strategy: strategy, Reason: RefusedNotListed,
				Msg: fmt.Sprintf("%s is not listed in %s; add its line (sha256sum %s >> %s)", name, SumsFile, name, SumsFile)}
		}
		return sum, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if sum, ok := c.pinned[name]; ok {
		if want != nil && !bytes.Equal(want, sum) {
			return sum, &Refusal{Strategy: strategy, Reason: RefusedPinConflict,
				Msg: fmt.Sprintf("the job first ran %s with SHA-256 %s, but this sidecar pinned %s when it first loaded it; put back the binary the job started with (and restart the sidecar), or start the job afresh to trust the new one",
					name, hex.EncodeToString(want), hex.EncodeToString(sum))}
		}
		return sum, nil
	}
	if want != nil {
		c.pinned[name] = bytes.Clone(want)
		return want, nil
	}
	sum, err := fileSHA256(path)
	if err != nil {
		return nil, err
	}
	c.pinned[name] = sum
	return sum, nil
}

// fileSHA256 hashes the file at path.
func fileSHA256(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("hashing plugin: %w", err)
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("hashing %s: %w", path, err)
	}
	return h.Sum(nil), nil
}
