/** mvirtd --help: every option, its default and what it is for. */
import { UPLINK_USAGE } from '../uplink/options.js';
export const USAGE = `usage: mvirtd [options]

  --data-dir DIR            state folder: mvirt.db, images/, vm/<id>/ (default /var/lib/mvirt)
  --images-dir DIR          built images (default <data-dir>/images)
  --listen HOST:PORT|off    MQTT over TCP for controllers (default 127.0.0.1:1883)
  --ws-listen HOST:PORT|off MQTT over WebSocket, e.g. 127.0.0.1:1884 (default off)
  --http HOST:PORT|off      HTTP: /metrics (Prometheus), the dashboard on /, MQTT over
                            WebSocket on /mqtt (default 127.0.0.1:8180)
  --unix-socket PATH|off    MQTT over a unix socket (default <data-dir>/mvirt.sock)
  --host-id ID              this host's id in topics (default: the hostname)
  --prefix P                topic prefix (default mvirt)
  --network MODE            network of VMs created without one: bridge, user or none
                            (default bridge as root, user otherwise)
  --bridge NAME|off         host bridge of bridged VMs, created with the host's address
                            when missing (default mvirt0 as root, off otherwise)
  --subnet CIDR             addresses of bridged VMs; the host takes the first one
                            (default 10.213.0.0/16)
  --nat                     outbound NAT for bridged VMs (nftables masquerade; default off)
  --guest-port N            agents' MQTT listener on the bridge address (default 1885)
  --guest-dns IP|off        DNS server for bridged guests (default: the host's first
                            non-loopback nameserver in /etc/resolv.conf)
  --max-vms N               VMs that may run at once (default 64)
  --max-vcpus N             vCPUs that may be allocated (default 4 × host CPUs)
  --max-memory-mib N        guest memory that may be allocated (default 90% of host memory)
  --default-vcpus N         vCPUs of a VM created without vcpus (default 1)
  --default-memory-mib N    memory of a VM created without memoryMiB (default 256)
  --default-image NAME      image of a VM created without image (default default)
  --default-backend NAME    hypervisor backend of VMs created without one: qemu,
                            cloud-hypervisor or firecracker (default qemu)
  --cloud-hypervisor-bin P  the cloud-hypervisor program (default cloud-hypervisor on PATH)
  --firecracker-bin P       the firecracker program (default firecracker on PATH)
  --jailer-bin P|off        Firecracker's jailer (default jailer on PATH)
  --boot-timeout-ms N       time for the agent to say ready (default 120000)
  --ram-dir DIR|none        keep each VM's RAM as a file on this tmpfs folder, so a snapshot is
                            its device state plus a copy of that file (default:
                            /dev/shm/mvirt-<hash of the data dir> when /dev/shm exists;
                            none: anonymous RAM, saved inside the migration stream)
  --unconfined              run QEMU as mvirtd's user in no cgroup (default: its own uid
                            and cgroup when root; see README "What runs as whom")
  --stop-timeout-ms N       graceful stop budget before SIGTERM (default 30000)
  --job-output-bytes N      output stored per job; the oldest is dropped beyond it
                            (default 8388608 = 8 MiB)
  --default-pool NAME       where jobs without vm/image/pool go when that pool exists
                            (default: an ephemeral VM of the default image)
  --job-agent-grace-ms N    a job whose agent stays away this long is lost (default 60000)
  --storage-max-gib N       volumes (their virtual sizes together) may take at most this
                            (default: no cap but the free space of DIR/volumes)
  --volume-import-dir DIR   volume.create {importFrom: FILE} copies FILE from here only
                            (default: no imports)
  --image-import-dir DIR    image.import {file: FILE} imports a container image archive
                            from here only (default: no imports)
  --users FILE              controller users: {"users":[{"username","passwordHash","role"}]};
                            TCP, WebSocket and HTTP clients always log in as one of them
  --allow-anonymous         anonymous controllers over the unix socket only (its owner,
                            group and mode decide who may connect; the default when no
                            --users file is given)
  --tls-cert FILE           TLS certificate (PEM) for the MQTT TCP, WebSocket and HTTP
                            listeners; with --tls-key; both re-read on SIGHUP
  --tls-key FILE            its private key (PEM)
  --tls-client-ca FILE      clients must present a certificate signed by this CA
  --stop-vms-on-exit        stop every VM when mvirtd exits (default: leave them running)
  --no-templates            boot every ephemeral VM (default: the first of each image and
                            size is snapshotted once ready, the rest resume from it)
  --spares N                keep N forks of a template resumed and ready for the next
                            jobs without a VM of that kind (default 1; 0: none); they
                            give way to any other VM that needs their room
  --spare-idle-s N          destroy a kind's spares after N s without such a job
                            (default 600)
  --events-retention-days N keep events this many days (default 30; audit records apart)
  --events-max-rows N       keep at most this many events (default 100000; audit records apart)
  --audit-retention-days N  keep audit records this many days (default 365, at least
                            --events-retention-days)
  --audit-max-rows N        keep at most this many audit records (default 1000000)
  --telemetry-interval-ms N agents report telemetry this often (default: 5000, the agent's)
  --metrics-retention-hours N
                            keep 1-minute metric roll-ups this long (default 24;
                            10-second roll-ups are kept one hour)
${UPLINK_USAGE}  --label K=V               a label of this host in its status, repeatable (mvirt run
                            --fleet --label K=V places jobs by them; docs/fleet.md)
  --log-level LEVEL         trace, debug, info, audit, warn, error (default info)
  --help, --version
`;
