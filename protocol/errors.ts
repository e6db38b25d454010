/**
 * The one error catalogue. Every error that crosses a wire carries one of these
 * stable UPPER_SNAKE codes; messages are for people, codes are for programs.
 * docs/errors.md is generated from / checked against this table.
 */
export const ERROR_CODES = {
  BAD_REQUEST: 'The request could not be parsed (not JSON/CBOR, or not an object with id/params).',
  INVALID_PARAMS: 'Parameters failed validation: wrong type, missing or unknown field.',
  UNKNOWN_METHOD: 'No such RPC method.',
  NOT_AUTHORIZED: 'The client may not do this (authentication or ACL).',
  FORBIDDEN:
    "The caller's role or scope does not allow this method on this object; nothing was changed. Ask an admin for a role that does (docs/security.md).",
  PAYLOAD_TOO_LARGE: 'A packet or payload exceeds the configured limit.',
  INVALID_NAME: 'A name, client id or topic contains forbidden characters or is too long.',
  VM_NOT_FOUND: 'No VM with that id or name.',
  VM_EXISTS: 'A VM with that name already exists.',
  VM_RUNNING: 'The VM must be stopped or failed for this operation.',
  VM_BAD_STATE: 'The VM is in a state that does not allow this operation.',
  CAPACITY_EXCEEDED: 'Admission control: vCPUs, memory or the VM count limit would be exceeded.',
  IMAGE_NOT_FOUND: 'No built image with that name; build it with `mvirt image build`.',
  IMAGE_INVALID:
    'A container image archive is damaged, unsafe or unsupported (an entry that leaves the image root, a device node, a bad digest, another platform); the message names the layer and entry and what to fix. Nothing was installed.',
  IMAGE_TOO_LARGE:
    "A container image's files exceed the import limits (bytes or entries), or a recipe's package closure its maxPackagesMiB; import a smaller image, drop packages, or raise the limit. Nothing was installed.",
  IMAGE_IN_USE:
    'The image is used by a VM or a pool (details name them); delete those or change the pool first.',
  BOOT_FAILED: 'The hypervisor process could not be started or exited during boot.',
  BOOT_TIMEOUT: 'The agent did not say hello within the boot timeout.',
  HYPERVISOR_ERROR: 'The hypervisor refused or failed an operation (QMP/REST error).',
  BACKEND_UNAVAILABLE: 'The requested hypervisor backend is not available on this host.',
  KERNEL_UNSUITABLE:
    "The image's kernel is not one this backend can boot (cloud-hypervisor and Firecracker need an x86-64 kernel with a PVH entry, CONFIG_PVH=y); details name the file. Pick another backend or another image.",
  CAPABILITY_UNSUPPORTED:
    "The VM's hypervisor backend lacks what the operation needs (pause, reboot, an agent channel, …); details name the backend and capability.",
  AGENT_UNAVAILABLE: 'The VM has no connected agent.',
  AGENT_ERROR: 'The guest agent reported an error.',
  JOB_NOT_FOUND: 'No job with that id.',
  JOB_DUPLICATE: 'A job with that id already exists.',
  JOB_NOT_RUNNING:
    'The job is not running: it is still queued (wait for `running`) or has finished; details give its state.',
  POOL_NOT_FOUND: 'No pool with that name.',
  VOLUME_NOT_FOUND: 'No volume with that id or name.',
  VOLUME_EXISTS: 'A volume with that name already exists.',
  VOLUME_IN_USE:
    'The volume is attached (read-write to another VM, to any VM for delete and resize, to a running VM for a snapshot restore), or is the template of a clone; details name the VMs or clones.',
  SNAPSHOT_UNSUPPORTED:
    'The volume cannot have snapshots: it is raw (only qcow2 keeps internal snapshots; make a qcow2 volume or a qcow2 overlay clone).',
  SNAPSHOT_NOT_FOUND:
    'No such snapshot: no VM snapshot with that id or name, or the volume has no snapshot with that name.',
  SNAPSHOT_EXISTS: 'A VM snapshot, or a snapshot of that volume, with that name already exists.',
  SNAPSHOT_IN_USE:
    'VMs made from the snapshot have not started yet and need its files, or a pool makes its VMs from it; start or delete those VMs, or change or delete the pool, first (details name them).',
  SNAPSHOT_INCOMPATIBLE:
    'The saved state cannot be resumed here: another hypervisor build, machine type, VM size, device layout or image; details say which.',
  SNAPSHOT_INVALID:
    "The snapshot's files are incomplete, damaged or do not match its manifest (size or sha256); nothing was started.",
  STORAGE_FULL:
    'Not enough storage: the free space of the volumes folder or --storage-max-gib would be exceeded; details say how many bytes are free.',
  STORAGE_UNSAFE:
    'A file in the storage folder is not what mvirtd made (a symbolic link, not a regular file, or outside the folder); nothing was done to it.',
  IMPORT_REFUSED:
    'The import source is not a regular file inside the configured import folder (--volume-import-dir), or no import folder is configured.',
  DISK_NOT_ATTACHED: 'The volume is not among the disks of that VM.',
  DISK_BUSY:
    'The guest did not release a disk being detached within the timeout; the disk stays attached and recorded (retry, or detach it while the VM is stopped).',
  NETWORK_UNAVAILABLE:
    'The requested network mode cannot be used on this host (bridge needs root and --bridge).',
  NETWORK_EXHAUSTED: 'Every address of the subnet (--subnet) is allocated.',
  NETWORK_ERROR: 'Creating or removing a bridge, TAP device or NAT rule failed.',
  FILE_NOT_FOUND: 'No such file or directory in the guest (or a parent of the path is missing).',
  FILE_EXISTS:
    'Something is already at that path in the guest (fs.move without overwrite, fs.mkdir without parents, a directory that is not empty).',
  FILE_PERMISSION: 'The guest refused: permission denied, or a read-only file system.',
  FILE_TYPE:
    'The path is the wrong kind of thing: a directory where a file is needed, or the reverse.',
  GUEST_DISK_FULL:
    "The guest's file system is full (or over quota); the partial file stays hidden, free space and resume.",
  TRANSFER_OFFSET:
    'A transfer cannot go on from there: the offset is beyond what the partial file has, or a chunk came out of order; details.written says where to go on.',
  TRANSFER_MISMATCH:
    "The transfer's bytes do not match its size or sha256; nothing was put in place (start again).",
  TRANSFER_NOT_FOUND:
    'No such transfer: it ended (error, timeout, or its VM went away) or never began; start again with seq 0 (open.resume keeps a partial file).',
  TRANSFER_BUSY:
    'Too many chunks of this transfer (or of all transfers) are on their way; send the next once one is answered.',
  PORT_FORWARD_NOT_FOUND: 'No port forward with that id (it was closed, or is outside your scope).',
  PORT_BIND_FAILED:
    'mvirtd cannot listen on that host address and port (in use, not an address of this host, or a privileged port); give another port, or 0 for any free one.',
  PORT_ADDRESS_REFUSED:
    'Guests can reach the host on that address (the wildcard or the bridge subnet), so a forward there would let one guest reach another; name another address.',
  TIMEOUT: 'The operation did not complete in time.',
  CONFIG_INVALID: 'A configuration file or command-line option is invalid.',
  RECIPE_INVALID: 'An image recipe is invalid.',
  DOWNLOAD_FAILED: 'A package or file could not be downloaded.',
  BUILD_FAILED: 'An image or kernel build step failed.',
  CONNECTION_FAILED: 'Could not connect to the broker or the daemon.',
  INVALID_RECORD:
    'A reply or a published record does not match the protocol schema: the client and mvirtd disagree (versions) or one of them has a bug.',
  SHUTTING_DOWN: 'The daemon is shutting down.',
  INTERNAL: 'An unexpected internal error; see the daemon log.',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export const isErrorCode = (s: unknown): s is ErrorCode =>
  typeof s === 'string' && Object.prototype.hasOwnProperty.call(ERROR_CODES, s);

/** The wire shape of an error in replies. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
  details?: unknown;
}

/** An error with a stable code; chain the underlying failure with `cause`. */
export class MvirtError extends Error {
  readonly code: ErrorCode;
  readonly details: unknown;
  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; details?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'MvirtError';
    this.code = code;
    this.details = opts.details;
  }

  toBody(): ErrorBody {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

export const mvirtError = (
  code: ErrorCode,
  message: string,
  opts?: { cause?: unknown; details?: unknown },
): MvirtError => new MvirtError(code, message, opts);

/** Map anything thrown onto a wire error body; unknown errors become INTERNAL. */
export function toErrorBody(err: unknown): ErrorBody {
  if (err instanceof MvirtError) return err.toBody();
  const message = err instanceof Error ? err.message : String(err);
  return { code: 'INTERNAL', message };
}

/** Rebuild an MvirtError from a wire body (client side). */
export function fromErrorBody(body: ErrorBody): MvirtError {
  return new MvirtError(isErrorCode(body.code) ? body.code : 'INTERNAL', body.message, {
    details: body.details,
  });
}
