#!/bin/sh
# In a private mount and network namespace: the image's root tree read-only with an
# overlay on top, /dev, /proc, tmpfs /tmp and /run, this checkout's daemons/, firstboot/
# and tests/witness/ read-only under /opt/kura, loopback up.
# Arguments: IMAGE OFFSET SIZE WORKDIR CHECKOUT
set -eu
image=$1 offset=$2 size=$3 work=$4 checkout=$5
mkdir -p "$work/lower" "$work/upper" "$work/work" "$work/root"
mount -o "ro,loop,offset=$offset,sizelimit=$size" "$image" "$work/lower"
mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$work/upper,workdir=$work/work" "$work/root"
root=$work/root
mount --bind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 tmp "$root/tmp"
mount -t tmpfs -o mode=755 run "$root/run"
for part in daemons firstboot tests/witness; do
    mkdir -p "$root/opt/kura/$part"
    mount --bind "$checkout/$part" "$root/opt/kura/$part"
    mount -o remount,bind,ro "$root/opt/kura/$part"
done
ip link set lo up
chroot "$root" install -d -o postgres -g postgres -m 2775 /run/postgresql
