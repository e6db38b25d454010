/**
 * The AsyncAPI 3.1 document of the public topic API: channels, operations and
 * messages for every RPC method (params and result schemas from PARAMS and
 * RESULTS in protocol/rpc.ts) and every public topic (payloads from the
 * records in protocol/). The only hand-written text is what a schema cannot
 * say: summaries, topic descriptions, servers. Requests and replies too come
 * from the schemas (requestOf and replyOf in protocol/rpc.ts).
 */
import { RPC_METHODS, replyOf, requestOf, type RpcMethod } from '../../../protocol/rpc.js';
import { componentSchemas, jsonSchema, type Json } from './schemas.js';

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });
const SUMMARIES: Record<RpcMethod, string> = {
  'system.info': 'Host capacity, allocation, backends, VM counts by state, images.',
  'vm.create': 'Define a VM; it stays stopped.',
  'vm.get': 'One VM by id or name.',
  'vm.list': 'All VMs, optionally in one state.',
  'vm.start':
    'Boot a VM; with wait, the reply comes once it is ready (or an error once it failed).',
  'vm.stop': 'Graceful stop (agent or ACPI), then SIGTERM, then SIGKILL; replies once stopped.',
  'vm.kill': 'Immediate stop; replies once stopped.',
  'vm.pause': 'Pause the vCPUs.',
  'vm.resume': 'Resume a paused VM.',
  'vm.reboot': 'Reboot the guest.',
  'vm.delete': 'Delete a stopped or failed VM (VM_RUNNING otherwise).',
  'vm.attachDisk':
    'Attach a volume: hot-plugged into a running VM (virtio-blk, serial = volume id), recorded for the next boot of a stopped one.',
  'vm.snapshot':
    "Save a VM's memory and device state as a named snapshot (the VM pauses for as long as that takes, then goes on); forks resume from it with vm.create {fromSnapshot}.",
  'vm.suspend':
    "Save a VM's memory and device state into its folder and end its hypervisor process (state suspended); vm.start resumes it without booting.",
  'snapshot.get': 'One VM snapshot: its source VM, image, size, hypervisor build and machine type.',
  'snapshot.list': 'The VM snapshots (of one VM with `vm`), oldest first.',
  'snapshot.delete':
    'Delete a VM snapshot and its files; refused (SNAPSHOT_IN_USE) while VMs made from it have not started yet, or a pool makes its VMs from it (fromSnapshot).',
  'vm.blockDevices':
    "The guest's block devices now, asked of its agent: name, serial (a volume's id), size, read-only, mount and the mount's use.",
  'vm.detachDisk':
    'Detach a volume: the guest must release it (DISK_BUSY after timeoutMs, the disk then stays); on a stopped VM only the record changes.',
  'job.run':
    'Run argv in a VM, an ephemeral VM of an image, or a pool VM (at most one of vm, image, pool); with wait, replies once finished.',
  'job.get': 'One job record.',
  'job.list': 'Jobs, filtered by VM and state, at most limit of them.',
  'job.cancel': 'Cancel a job (its whole process group in the guest).',
  'job.signal': "Send a signal to a running job's process group.",
  'job.stdin': 'More input for a job run with stdinOpen (answered once the job took it).',
  'job.resize':
    "A new window size for a job run with tty: its terminal's foreground processes get SIGWINCH.",
  'job.logs':
    'Stored output chunks from a sequence number, one page (at most maxBytes of data) per call; page on with nextSeq while more.',
  'pool.set':
    "Create or change a pool: the daemon keeps min ready VMs of its image, at most max in all (max ≥ min); with snapshot: true they are forks of mvirtd's template snapshot of the image and size, with fromSnapshot forks of that snapshot (its image and size are the pool's).",
  'pool.get': 'One pool by name.',
  'pool.list': 'All pools.',
  'pool.delete': 'Delete a pool.',
  'image.list':
    'The images of the host (built µOS images and imported container images), with the VMs and pools that use each.',
  'image.get': "One image: its record and its manifest.json (every input's and layer's digest).",
  'image.delete':
    'Delete an image folder; IMAGE_IN_USE while a VM or pool uses it (details name them). Admin, unscoped.',
  'image.build':
    'Build a µOS image from a recipe sent in the message (no host files); progress lines are events (component image, object image:<name>); replies when done. Admin, unscoped.',
  'image.import':
    'Import a container image (OCI layout tar or docker save archive) by file name from --image-import-dir; progress as events like image.build; IMAGE_INVALID / IMAGE_TOO_LARGE leave nothing behind. Admin, unscoped.',
  'volume.create':
    'Create a raw or qcow2 volume of sizeMiB under <data-dir>/volumes/, or import a file by name from --volume-import-dir; STORAGE_FULL when it does not fit.',
  'volume.get': 'One volume by id or name, its actual usage measured now.',
  'volume.list': 'All volumes (the caller may see).',
  'volume.resize': 'Grow a volume (never shrink); refused while a running VM has it attached.',
  'volume.delete':
    'Delete a volume and its file; refused while attached or while clones use it as template.',
  'volume.clone':
    'A new volume from a template: a qcow2 copy-on-write overlay (default) or a full copy.',
  'volume.snapshot':
    'Take a qcow2 internal snapshot of a volume: live in the running VM that has it attached, else with qemu-img; SNAPSHOT_UNSUPPORTED for raw volumes.',
  'volume.snapshots':
    "A volume's snapshots, oldest first, with their vm-state size (0: disk-only) and date.",
  'volume.restore':
    "Bring a volume's data back to a snapshot; refused while a running VM has it attached.",
  'volume.deleteSnapshot': 'Delete one snapshot of a volume (live when a running VM has it).',
  'events.query': 'The event log, filtered by object, level and time.',
  'fs.write':
    'One chunk of a file written into a VM (transfer, seq from 0; seq 0 opens with path, owner, mode, resume/offset or unpack tar; the last has final size and sha256 and renames the file into place); at most FS_WINDOW chunks unanswered.',
  'fs.read':
    "The next chunk of a file (or of a directory packed as tar) read from a VM; the last says eof with the whole file's size and sha256.",
  'fs.stat': 'Type, size, mode, owner and time of a path in a VM (a symbolic link itself).',
  'fs.list': "A directory's entries in a VM, by name, at most limit.",
  'fs.mkdir': 'Make a directory in a VM (parents: with missing parents), with mode and owner.',
  'fs.remove':
    'Remove a file, symbolic link or empty directory (recursive: any directory) in a VM.',
  'fs.move': 'Rename a path in a VM (overwrite: replace what is at to).',
  'port.forward':
    "Listen on a host address (default 127.0.0.1, hostPort 0: any free port) and carry each TCP connection to 127.0.0.1:guestPort inside the VM over its agent channel, whatever its network; lives until port.close, the caller's MQTT connection ends, or the VM stops.",
  'port.list': 'The open port forwards (of VMs in your scope), with their connection counts.',
  'port.close': 'Close a port forward and drop its connections.',
  'metrics.query':
    'Telemetry roll-ups of a VM (or, without vm, of the host) between from and to: 10 s buckets for the last hour, 1 min for a day; step re-aggregates.',
};

const channelId = (m: string): string => `rpc_${m.replace(/\./g, '_')}`;

// ------------------------------------------------------------- document

export function asyncApiDocument(): Json {
  const param = (description: string): Json => ({ description });
  const hostParams = {
    prefix: param('topic prefix (mvirtd --prefix, default mvirt)'),
    hostId: param('host id (mvirtd --host-id, default the hostname)'),
  };
  const channels: Record<string, Json> = {};
  const operations: Record<string, Json> = {};
  const messages: Record<string, Json> = {};
  const schemas: Record<string, Json> = componentSchemas();

  channels.replies = {
    address: null,
    title: 'RPC replies',
    description:
      "The request's replyTo topic, chosen by the caller; it must lie outside <prefix>/<hostId>/. " +
      'The protocol client uses <prefix>/_clients/<clientId>/replies. The reply uses the request encoding (JSON or CBOR).',
    messages: Object.fromEntries(
      RPC_METHODS.map((m) => [
        `${channelId(m)}_reply`,
        { $ref: `#/components/messages/${channelId(m)}_reply` },
      ]),
    ),
  };

  for (const m of RPC_METHODS) {
    const id = channelId(m);
    messages[`${id}_request`] = {
      name: `${m} request`,
      contentType: 'application/json',
      description: 'JSON, or CBOR (a map) for a CBOR reply',
      payload: jsonSchema(requestOf(m), 'input'),
    };
    messages[`${id}_reply`] = {
      name: `${m} reply`,
      contentType: 'application/json',
      payload: jsonSchema(replyOf(m), 'output'),
    };
    channels[id] = {
      address: `{prefix}/{hostId}/rpc/${m}`,
      title: m,
      messages: { request: { $ref: `#/components/messages/${id}_request` } },
      parameters: {
        prefix: { $ref: '#/components/parameters/prefix' },
        hostId: { $ref: '#/components/parameters/hostId' },
      },
    };
    operations[m] = {
      action: 'send',
      summary: SUMMARIES[m],
      channel: { $ref: `#/channels/${id}` },
      messages: [{ $ref: `#/channels/${id}/messages/request` }],
      reply: {
        address: { location: '$message.payload#/replyTo' },
        channel: { $ref: '#/channels/replies' },
        messages: [{ $ref: `#/channels/replies/messages/${id}_reply` }],
      },
    };
  }

  const topic = (
    name: string,
    address: string,
    description: string,
    payload: Json,
    o: { retained?: boolean; send?: boolean; contentType?: string } = {},
  ): void => {
    messages[name] = {
      name,
      contentType: o.contentType ?? 'application/json',
      payload,
    };
    channels[name] = {
      address,
      description: `${description}${o.retained ? ' Retained.' : ''}`,
      messages: { [name]: { $ref: `#/components/messages/${name}` } },
      parameters: Object.fromEntries(
        [...address.matchAll(/\{(\w+)\}/g)].map(([, p]) => [
          p!,
          { $ref: `#/components/parameters/${p!}` },
        ]),
      ),
    };
    operations[`${o.send ? 'send' : 'receive'}_${name}`] = {
      action: o.send ? 'send' : 'receive',
      channel: { $ref: `#/channels/${name}` },
      messages: [{ $ref: `#/channels/${name}/messages/${name}` }],
      ...(o.retained ? { bindings: { mqtt: { retain: true } } } : {}),
    };
  };
  topic(
    'brokerOwner',
    '{prefix}/_broker',
    'The host whose embedded broker this is, retained by mvirtd before its listeners open; controllers may not publish it. A controller that reads it knows the host at once (no other host publishes on that broker); elsewhere it finds hosts by their status.',
    ref('BrokerOwner'),
    { retained: true },
  );
  topic(
    'hostStatus',
    '{prefix}/{hostId}/status',
    "Host status; the daemon's last will sets online:false.",
    ref('HostStatus'),
    { retained: true },
  );
  topic(
    'hostEvents',
    '{prefix}/{hostId}/events',
    'Every event-log entry, live (what events.query returns).',
    ref('EventRecord'),
  );
  topic(
    'vmState',
    '{prefix}/{hostId}/vm/{vmId}/state',
    'The VM record after each change; an empty retained message when the VM is deleted.',
    ref('VmRecord'),
    { retained: true },
  );
  topic(
    'vmEvents',
    '{prefix}/{hostId}/vm/{vmId}/events',
    'Lifecycle events of one VM.',
    ref('VmEvent'),
  );
  topic(
    'vmTelemetry',
    '{prefix}/{hostId}/vm/{vmId}/telemetry',
    'Guest figures reported by the agent.',
    ref('VmTelemetry'),
  );
  topic(
    'vmConsoleOut',
    '{prefix}/{hostId}/vm/{vmId}/console/out',
    'Serial console output, raw bytes: what arrives within 50 ms (at most 64 KiB) as one message, published only while a client subscribes.',
    { type: 'string', format: 'binary' },
    { contentType: 'application/octet-stream' },
  );
  topic(
    'vmConsoleIn',
    '{prefix}/{hostId}/vm/{vmId}/console/in',
    'Serial console input, raw bytes (controllers may publish here). The µOS runs no shell or getty on the console: nothing in the default image reads it (run commands with job.run).',
    { type: 'string', format: 'binary' },
    { contentType: 'application/octet-stream', send: true },
  );
  topic(
    'jobState',
    '{prefix}/{hostId}/job/{jobId}/state',
    'The job record after each change.',
    ref('JobRecord'),
    { retained: true },
  );
  topic(
    'jobOutput',
    '{prefix}/{hostId}/job/{jobId}/output',
    'Live output chunks; replay with job.logs.',
    ref('OutputChunk'),
  );
  topic(
    'portForwardNotices',
    '{prefix}/_clients/{clientId}/replies/port/{forwardId}',
    'Each connection of a port forward opening and closing (conn 0: the forward itself closed), for the client that opened it; published only while it subscribes.',
    ref('PortForwardNotice'),
  );
  topic(
    'poolState',
    '{prefix}/{hostId}/pool/{pool}/state',
    'The pool record after each change.',
    ref('PoolRecord'),
    { retained: true },
  );
  topic(
    'volumeState',
    '{prefix}/{hostId}/volume/{volumeId}/state',
    'The volume record after each change; an empty retained message once deleted.',
    ref('VolumeRecord'),
    { retained: true },
  );

  return {
    asyncapi: '3.1.0',
    info: {
      title: 'mvirt public topic API',
      version: '1',
      description:
        'mvirtd embeds an MQTT 3.1.1 broker. Controllers publish RPC requests on <prefix>/<hostId>/rpc/<method> and ' +
        'get replies on their replyTo topic; state is retained on topics. Generated by host/cli/docs-gen.ts from ' +
        'protocol/ (do not edit by hand). The contract in prose: docs/protocol.md; error codes: docs/errors.md.',
    },
    defaultContentType: 'application/json',
    servers: {
      local: {
        host: '127.0.0.1:1883',
        protocol: 'mqtt',
        protocolVersion: '3.1.1',
        description: 'mvirtd --listen (default); also a unix socket at <data-dir>/mvirt.sock',
      },
      websocket: {
        host: '127.0.0.1:1884',
        protocol: 'ws',
        description: 'mvirtd --ws-listen, for browsers',
      },
      http: {
        host: '127.0.0.1:8180',
        pathname: '/mqtt',
        protocol: 'ws',
        description:
          'mvirtd --http (default on loopback): MQTT over WebSocket on /mqtt beside the dashboard and /metrics',
      },
    },
    channels,
    operations,
    components: {
      parameters: {
        ...hostParams,
        vmId: param('VM id (as in the VM record)'),
        jobId: param('job id'),
        pool: param('pool name'),
        volumeId: param('volume id (vol-<hex>)'),
        clientId: param('the MQTT client id of the controller that opened the forward'),
        forwardId: param('port forward id (pf-<hex>)'),
      },
      schemas,
      messages,
    },
  };
}
