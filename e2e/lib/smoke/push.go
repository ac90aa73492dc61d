// Pushes a one-file image to a registry over plain HTTP, the way an in-cluster builder
// would: the smoke test compiles this inside a golang pod to prove that pods can push to
// $STAGECOACH_REGISTRY. Usage: push REGISTRY REPOSITORY TAG FILE
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
)

func digest(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func upload(registry, repo string, blob []byte) (string, error) {
	resp, err := http.Post("http://"+registry+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("start upload: %s", resp.Status)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return "", err
	}
	d := digest(blob)
	q := loc.Query()
	q.Set("digest", d)
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(blob))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("finish upload: %s", resp.Status)
	}
	return d, nil
}

func run() error {
	if len(os.Args) != 5 {
		return fmt.Errorf("usage: push REGISTRY REPOSITORY TAG FILE")
	}
	registry, repo, tag, file := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	content, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	name := filepath.Base(file)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	tw.Write(content)
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	io.Copy(zw, bytes.NewReader(layer.Bytes()))
	zw.Close()

	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": []string{"/" + name}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digest(layer.Bytes())}},
	})
	layerDigest, err := upload(registry, repo, gz.Bytes())
	if err != nil {
		return err
	}
	configDigest, err := upload(registry, repo, config)
	if err != nil {
		return err
	}
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest, "size": gz.Len()}},
	})
	req, _ := http.NewRequest(http.MethodPut, "http://"+registry+"/v2/"+repo+"/manifests/"+url.PathEscape(tag), bytes.NewReader(manifest))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("put manifest: %s", resp.Status)
	}
	fmt.Printf("pushed %s/%s:%s\n", registry, repo, tag)
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "push:", err)
		os.Exit(1)
	}
}
