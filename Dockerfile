# A small image around a qmp_exporter binary built outside it, in the
# Prometheus organisation's way: run `make build` (or `promu crossbuild`)
# first, so that .build/<os>-<arch>/qmp_exporter exists.
#
# The exporter needs the VMs' QMP sockets: mount them into the container
# (e.g. -v /run/qemu:/run/qemu) and make sure the user below may connect to
# them, or run the container as a user that can.
ARG ARCH="amd64"
ARG OS="linux"
FROM quay.io/prometheus/busybox-${OS}-${ARCH}:latest

ARG ARCH="amd64"
ARG OS="linux"
COPY .build/${OS}-${ARCH}/qmp_exporter /bin/qmp_exporter
COPY LICENSE /LICENSE

EXPOSE 10714
USER nobody
ENTRYPOINT ["/bin/qmp_exporter"]
