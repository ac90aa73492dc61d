// A minimal dynamic provisioner for the local test cluster: each claim of its storage class
// gets a fresh host directory, exposed as a hostPath PersistentVolume bound to that claim,
// and the directory is removed when the claim is gone. Everything runs on one node, so any
// access mode (ReadWriteMany included) is honoured by the plain directory.
//
// It talks to the API server with the standard library only, so it builds in seconds
// without pulling client-go into the test cluster's toolchain.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const provisionedBy = "pv.kubernetes.io/provisioned-by"

type meta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	DeletionTimestamp *string           `json:"deletionTimestamp,omitempty"`
}

type claim struct {
	Metadata meta `json:"metadata"`
	Spec     struct {
		StorageClassName *string  `json:"storageClassName"`
		VolumeName       string   `json:"volumeName"`
		AccessModes      []string `json:"accessModes"`
		VolumeMode       *string  `json:"volumeMode"`
		Resources        struct {
			Requests map[string]string `json:"requests"`
		} `json:"resources"`
	} `json:"spec"`
	Status struct {
		Phase string `json:"phase"`
	} `json:"status"`
}

type volume struct {
	Metadata meta `json:"metadata"`
	Spec     struct {
		PersistentVolumeReclaimPolicy string `json:"persistentVolumeReclaimPolicy"`
		HostPath                      *struct {
			Path string `json:"path"`
		} `json:"hostPath"`
	} `json:"spec"`
	Status struct {
		Phase string `json:"phase"`
	} `json:"status"`
}

type provisioner struct {
	server, class, name, dir string
	client                   *http.Client
}

func (p *provisioner) do(method, path string, body any, out any) (int, error) {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, p.server+path, reader)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return resp.StatusCode, json.Unmarshal(data, out)
	}
	return resp.StatusCode, nil
}

func (p *provisioner) provision(c claim) error {
	name := "pvc-" + c.Metadata.UID
	dir := filepath.Join(p.dir, name)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	// Pods often run as non-root users; the umask would otherwise leave the directory 0755.
	if err := os.Chmod(dir, 0o777); err != nil {
		return err
	}
	size := c.Spec.Resources.Requests["storage"]
	if size == "" {
		size = "1Gi"
	}
	modes := c.Spec.AccessModes
	if len(modes) == 0 {
		modes = []string{"ReadWriteOnce"}
	}
	pv := map[string]any{
		"apiVersion": "v1",
		"kind":       "PersistentVolume",
		"metadata": map[string]any{
			"name":        name,
			"annotations": map[string]string{provisionedBy: p.name},
		},
		"spec": map[string]any{
			"capacity":                      map[string]string{"storage": size},
			"accessModes":                   modes,
			"persistentVolumeReclaimPolicy": "Delete",
			"storageClassName":              p.class,
			"volumeMode":                    "Filesystem",
			"hostPath":                      map[string]string{"path": dir, "type": "Directory"},
			"claimRef": map[string]string{
				"apiVersion": "v1",
				"kind":       "PersistentVolumeClaim",
				"namespace":  c.Metadata.Namespace,
				"name":       c.Metadata.Name,
				"uid":        c.Metadata.UID,
			},
		},
	}
	code, err := p.do("POST", "/api/v1/persistentvolumes", pv, nil)
	if code == http.StatusConflict {
		return nil
	}
	if err == nil {
		log.Printf("provisioned %s for %s/%s at %s", name, c.Metadata.Namespace, c.Metadata.Name, dir)
	}
	return err
}

func (p *provisioner) reclaim(v volume) error {
	if v.Spec.HostPath != nil {
		path := filepath.Clean(v.Spec.HostPath.Path)
		// Never remove anything this provisioner did not create.
		if filepath.Dir(path) == filepath.Clean(p.dir) && strings.HasPrefix(filepath.Base(path), "pvc-") {
			if err := os.RemoveAll(path); err != nil {
				return err
			}
		}
	}
	code, err := p.do("DELETE", "/api/v1/persistentvolumes/"+v.Metadata.Name, nil, nil)
	if code == http.StatusNotFound {
		return nil
	}
	if err == nil {
		log.Printf("deleted %s", v.Metadata.Name)
	}
	return err
}

func (p *provisioner) pass() error {
	var volumes struct{ Items []volume }
	if _, err := p.do("GET", "/api/v1/persistentvolumes", nil, &volumes); err != nil {
		return err
	}
	existing := map[string]bool{}
	for _, v := range volumes.Items {
		existing[v.Metadata.Name] = true
		if v.Metadata.Annotations[provisionedBy] != p.name || v.Metadata.DeletionTimestamp != nil {
			continue
		}
		if v.Spec.PersistentVolumeReclaimPolicy == "Delete" && (v.Status.Phase == "Released" || v.Status.Phase == "Failed") {
			if err := p.reclaim(v); err != nil {
				log.Print(err)
			}
		}
	}
	var claims struct{ Items []claim }
	if _, err := p.do("GET", "/api/v1/persistentvolumeclaims", nil, &claims); err != nil {
		return err
	}
	for _, c := range claims.Items {
		if c.Spec.StorageClassName == nil || *c.Spec.StorageClassName != p.class {
			continue
		}
		if c.Spec.VolumeName != "" || c.Status.Phase != "Pending" || c.Metadata.DeletionTimestamp != nil {
			continue
		}
		if c.Spec.VolumeMode != nil && *c.Spec.VolumeMode != "Filesystem" {
			continue
		}
		if existing["pvc-"+c.Metadata.UID] {
			continue
		}
		if err := p.provision(c); err != nil {
			log.Print(err)
		}
	}
	return nil
}

func main() {
	server := flag.String("server", "", "API server URL")
	ca := flag.String("ca", "", "CA certificate file")
	cert := flag.String("cert", "", "client certificate file")
	key := flag.String("key", "", "client key file")
	class := flag.String("class", "standard", "storage class to serve")
	name := flag.String("name", "stagecoach.dev/hostpath", "provisioner name of the storage class")
	dir := flag.String("dir", "", "host directory that holds the volumes")
	interval := flag.Duration("interval", time.Second, "time between two passes")
	flag.Parse()
	if *server == "" || *dir == "" {
		log.Fatal("-server and -dir are required")
	}
	caPEM, err := os.ReadFile(*ca)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatal(err)
	}
	p := &provisioner{
		server: strings.TrimRight(*server, "/"),
		class:  *class,
		name:   *name,
		dir:    *dir,
		client: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}},
		},
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Fatal(err)
	}
	log.Printf("serving storage class %q as %q in %s", *class, *name, *dir)
	for {
		if err := p.pass(); err != nil {
			log.Print(err)
		}
		time.Sleep(*interval)
	}
}
