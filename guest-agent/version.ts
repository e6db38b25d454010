/** The agent's own version, reported in hello and by `mvirt-agent --version`. */
export const AGENT_VERSION = '0.1.0';
