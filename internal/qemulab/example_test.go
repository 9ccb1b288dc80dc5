package qemulab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/qmp-exporter/qmp_exporter/internal/qemulab"
)

// A test starts a lab VM, points the program under test at ExporterSocket,
// and drives events on the control monitor and qtest.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "lab")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	vm, err := qemulab.Start(ctx, qemulab.Options{Dir: dir, Name: "demo", Devices: true})
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Close()
	fmt.Println("exporter socket:", vm.ExporterSocket)

	// Expect before acting: the event may arrive before the command returns.
	reset := vm.Ctl.Expect("RESET")
	if err := vm.GuestReset(ctx); err != nil {
		log.Fatal(err)
	}
	ev, err := reset.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	var data struct {
		Guest  bool   `json:"guest"`
		Reason string `json:"reason"`
	}
	json.Unmarshal(ev.Data, &data)
	fmt.Println(ev.Name, data.Guest, data.Reason) // RESET true guest-reset

	if err := vm.Quit(ctx); err != nil {
		log.Fatal(err)
	}
}
