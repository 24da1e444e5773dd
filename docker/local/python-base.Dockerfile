# The stand-in for python:3.11-slim-bookworm on a machine that reaches no image registry
# (scripts/build-images builds it; docs/deploy.md, "Images and the container test").
#
# ROOTFS_IMAGE is a Debian bookworm minbase root filesystem with Debian's python3, made
# by debootstrap and imported with `podman import`. Debian's python3 is "externally
# managed" and has no pip, so this makes a virtualenv at /usr/local: `python` and `pip`
# on PATH are then what the Dockerfiles expect from the official image. An imported
# image has no environment at all, hence PATH and LANG here.
ARG ROOTFS_IMAGE=localhost/ksc-rootfs:bookworm
FROM ${ROOTFS_IMAGE}
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
RUN python3 -m venv /usr/local
CMD ["python3"]
