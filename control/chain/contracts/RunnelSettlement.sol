// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// The two ERC-20 calls the settlement makes on the DATA token.
interface IERC20Minimal {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
}

/// @title RunnelSettlement: nodes are paid in DATA for the traffic they relay
/// (docs/settlement.md).
///
/// Sponsors fund the contract in DATA, per stream (the stream id is only recorded in the
/// event: the pool is one). Once per epoch the operator commits a Merkle root over every
/// account's *cumulative* earnings since the start; after the freeze period an account
/// withdraws the difference between its cumulative earnings and what it has withdrawn,
/// with a proof. The tree is the Monoplasma one, which Data Unions reuse:
///
///   leaf   = keccak256(abi.encodePacked(address account, uint256 cumulative))   (52 bytes in)
///   parent = keccak256(abi.encodePacked(min(a, b), max(a, b)))                  (64 bytes in)
///
/// An odd node at the end of a level is carried up unchanged; a one-leaf tree's root is the
/// leaf. A leaf's preimage (52 bytes) can never be an inner node's (64 bytes).
///
/// What the contract guarantees is only on totals: the committed total never exceeds what
/// was funded, and never decreases. That the tree's leaves sum to that total is the
/// operator's word; the freeze period is the window in which anyone holding the epoch's
/// reports can see that a root is wrong (there is no on-chain challenge, see
/// docs/settlement.md). DATA sent with a plain `transfer` (not `fund` or `transferAndCall`)
/// is not counted and stays stranded.
contract RunnelSettlement {
    struct Commit {
        bytes32 root;
        uint256 totalEarnings;
        uint256 committedAt;
    }

    IERC20Minimal public immutable token;
    address public immutable operator;
    /// Seconds after an epoch's commit before withdrawals against it are allowed.
    uint256 public immutable freezePeriod;

    /// DATA received through `fund` and `onTokenTransfer`.
    uint256 public totalFunded;
    /// The last committed epoch; 0 = none yet.
    uint64 public latestEpoch;
    /// Per account: the cumulative earnings already paid out.
    mapping(address => uint256) public withdrawn;
    mapping(uint64 => Commit) public commits;

    event Funded(string streamId, address indexed sponsor, uint256 amount);
    event Committed(uint64 indexed epoch, bytes32 root, uint256 totalEarnings);
    event Withdrawn(uint64 indexed epoch, address indexed account, uint256 amount);

    error ZeroAddress();
    error NotToken();
    error NotOperator();
    error EpochNotIncreasing();
    error EmptyRoot();
    error EarningsDecreased();
    error Insolvent();
    error NotCommitted();
    error Frozen(uint256 until);
    error BadProof();
    error NothingOwed();
    error TransferFailed();

    constructor(address token_, address operator_, uint256 freezePeriodSeconds) {
        if (token_ == address(0) || operator_ == address(0)) revert ZeroAddress();
        token = IERC20Minimal(token_);
        operator = operator_;
        freezePeriod = freezePeriodSeconds;
    }

    /// Funds the pool with `amount` DATA from the caller (who approved it first).
    function fund(string calldata streamId, uint256 amount) external {
        if (!token.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
        totalFunded += amount;
        emit Funded(streamId, msg.sender, amount);
    }

    /// ERC-677: DATA's `transferAndCall(settlement, amount, bytes(streamId))` funds in one
    /// transaction. Only the token may call it: anyone else could claim funds that never came.
    function onTokenTransfer(address sender, uint256 amount, bytes calldata data) external {
        if (msg.sender != address(token)) revert NotToken();
        totalFunded += amount;
        emit Funded(string(data), sender, amount);
    }

    /// Commits `epoch`'s root over cumulative earnings summing to `totalEarnings`.
    function commit(uint64 epoch, bytes32 root, uint256 totalEarnings) external {
        if (msg.sender != operator) revert NotOperator();
        if (epoch <= latestEpoch) revert EpochNotIncreasing();
        if (root == bytes32(0)) revert EmptyRoot();
        if (totalEarnings < commits[latestEpoch].totalEarnings) revert EarningsDecreased();
        if (totalEarnings > totalFunded) revert Insolvent();
        latestEpoch = epoch;
        commits[epoch] = Commit(root, totalEarnings, block.timestamp);
        emit Committed(epoch, root, totalEarnings);
    }

    /// Pays `account` its `cumulative` earnings in `epoch`'s root minus what it has already
    /// been paid. Anyone may send it (a relayer paying the gas); the DATA goes to `account`.
    function withdraw(uint64 epoch, address account, uint256 cumulative, bytes32[] calldata proof) external {
        Commit storage committed = commits[epoch];
        if (committed.root == bytes32(0)) revert NotCommitted();
        // Saturates instead of overflowing: a freeze period too long to end is a root
        // frozen for ever, not a Panic.
        uint256 until = committed.committedAt > type(uint256).max - freezePeriod
            ? type(uint256).max
            : committed.committedAt + freezePeriod;
        if (block.timestamp < until) revert Frozen(until);
        if (!verifyProof(committed.root, account, cumulative, proof)) revert BadProof();
        uint256 paid = withdrawn[account];
        if (cumulative <= paid) revert NothingOwed();
        withdrawn[account] = cumulative;
        uint256 amount = cumulative - paid;
        if (!token.transfer(account, amount)) revert TransferFailed();
        emit Withdrawn(epoch, account, amount);
    }

    /// The leaf of `account` with `cumulative` earnings.
    function leafHash(address account, uint256 cumulative) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(account, cumulative));
    }

    /// Whether `proof` (siblings from the leaf up; none for a carried-up odd node) links
    /// `(account, cumulative)` to `root`.
    function verifyProof(bytes32 root, address account, uint256 cumulative, bytes32[] calldata proof) public pure returns (bool) {
        bytes32 node = leafHash(account, cumulative);
        for (uint256 i = 0; i < proof.length; i++) {
            bytes32 sibling = proof[i];
            node = node < sibling
                ? keccak256(abi.encodePacked(node, sibling))
                : keccak256(abi.encodePacked(sibling, node));
        }
        return node == root;
    }
}
