// SPDX-License-Identifier: MIT
// The escrow contracts Fusion Prime settles against. Build: `make contracts` (solc-js from
// tools/evm); the ABI and bytecode are committed in src/fusion_prime/settlement/contracts/
// and tests/settlement/test_contracts.py checks they match this source.
//
// Every escrow reports its state changes to the factory that created it, and the factory
// emits all the events: the relayer reads one address with one eth_getLogs filter, however
// many escrows exist. Each action carries a correlation id (a settlement command id, a
// UUID as bytes16; zero when the action did not come from a command).
pragma solidity 0.8.37;

interface IERC20 {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function decimals() external view returns (uint8);
}

contract EscrowFactory {
    event EscrowDeployed(
        address indexed escrow,
        address indexed payer,
        address indexed payee,
        address arbiter,
        address asset,
        uint8 decimals,
        uint256 amount,
        uint64 releaseDelay,
        uint8 approvalsRequired,
        bytes16 correlationId
    );
    event EscrowApproved(address indexed escrow, address indexed approver, bytes16 correlationId);
    event EscrowReleased(address indexed escrow, bytes16 correlationId);
    event EscrowRefunded(address indexed escrow, bytes16 correlationId);
    event EscrowDisputed(address indexed escrow, address indexed by, bytes16 correlationId);
    event EscrowArbiterChanged(
        address indexed escrow, address indexed newArbiter, bytes16 correlationId
    );

    mapping(address => bool) public isEscrow;

    modifier onlyEscrow() {
        require(isEscrow[msg.sender], "not an escrow of this factory");
        _;
    }

    /// Lock `amount` of `asset` (address(0): native ether, sent as msg.value; otherwise an
    /// ERC-20 the payer approved this factory for) until release to the payee or refund.
    function create(
        address payee,
        address arbiter,
        address asset,
        uint256 amount,
        uint64 releaseDelay,
        uint8 approvalsRequired,
        bytes16 correlationId
    ) external payable returns (address) {
        require(payee != address(0) && arbiter != address(0), "zero party");
        require(approvalsRequired >= 1 && approvalsRequired <= 3, "approvals 1-3");
        require(amount > 0, "zero amount");
        uint8 decimals = 18;
        if (asset == address(0)) {
            require(msg.value == amount, "value must equal amount");
        } else {
            require(msg.value == 0, "ether sent with a token escrow");
            decimals = IERC20(asset).decimals();
        }
        Escrow escrow = new Escrow{value: msg.value}(
            msg.sender, payee, arbiter, asset, amount, releaseDelay, approvalsRequired
        );
        isEscrow[address(escrow)] = true;
        if (asset != address(0)) {
            require(
                IERC20(asset).transferFrom(msg.sender, address(escrow), amount), "funding failed"
            );
        }
        emit EscrowDeployed(
            address(escrow),
            msg.sender,
            payee,
            arbiter,
            asset,
            decimals,
            amount,
            releaseDelay,
            approvalsRequired,
            correlationId
        );
        return address(escrow);
    }

    function noteApproved(address approver, bytes16 correlationId) external onlyEscrow {
        emit EscrowApproved(msg.sender, approver, correlationId);
    }

    function noteReleased(bytes16 correlationId) external onlyEscrow {
        emit EscrowReleased(msg.sender, correlationId);
    }

    function noteRefunded(bytes16 correlationId) external onlyEscrow {
        emit EscrowRefunded(msg.sender, correlationId);
    }

    function noteDisputed(address by, bytes16 correlationId) external onlyEscrow {
        emit EscrowDisputed(msg.sender, by, correlationId);
    }

    function noteArbiterChanged(address newArbiter, bytes16 correlationId) external onlyEscrow {
        emit EscrowArbiterChanged(msg.sender, newArbiter, correlationId);
    }
}

contract Escrow {
    enum Status {
        Created,
        Approved,
        Released,
        Refunded,
        Disputed
    }

    EscrowFactory public immutable factory;
    address public immutable payer;
    address public immutable payee;
    address public immutable asset;
    uint256 public immutable amount;
    uint64 public immutable releaseDelay;
    uint8 public immutable approvalsRequired;

    address public arbiter;
    Status public status;
    uint8 public approvals;
    uint64 public approvedAt;
    mapping(address => bool) public approvedBy;

    constructor(
        address payer_,
        address payee_,
        address arbiter_,
        address asset_,
        uint256 amount_,
        uint64 releaseDelay_,
        uint8 approvalsRequired_
    ) payable {
        factory = EscrowFactory(msg.sender);
        payer = payer_;
        payee = payee_;
        arbiter = arbiter_;
        asset = asset_;
        amount = amount_;
        releaseDelay = releaseDelay_;
        approvalsRequired = approvalsRequired_;
    }

    function isParty(address who) public view returns (bool) {
        return who == payer || who == payee || who == arbiter;
    }

    /// One approval per party; the escrow is approved when `approvalsRequired` distinct
    /// parties approved.
    function approve(bytes16 correlationId) external {
        require(status == Status.Created, "not open for approval");
        require(isParty(msg.sender), "not a party");
        require(!approvedBy[msg.sender], "already approved");
        approvedBy[msg.sender] = true;
        approvals += 1;
        if (approvals >= approvalsRequired) {
            status = Status.Approved;
            approvedAt = uint64(block.timestamp);
        }
        factory.noteApproved(msg.sender, correlationId);
    }

    /// Pays the payee once approved and `releaseDelay` seconds after the approval; in a
    /// dispute only the arbiter may release (deciding for the payee), at once.
    function release(bytes16 correlationId) external {
        if (status == Status.Disputed) {
            require(msg.sender == arbiter, "disputed: only the arbiter");
        } else {
            require(status == Status.Approved, "not approved");
            require(isParty(msg.sender), "not a party");
            require(block.timestamp >= approvedAt + releaseDelay, "release delay not over");
        }
        status = Status.Released;
        factory.noteReleased(correlationId);
        _pay(payee);
    }

    /// The payer or the payee contests an open escrow: approvals and releases stop until
    /// the arbiter decides (release to the payee or refund to the payer).
    function dispute(bytes16 correlationId) external {
        require(status == Status.Created || status == Status.Approved, "not open");
        require(msg.sender == payer || msg.sender == payee, "only the payer or payee");
        status = Status.Disputed;
        factory.noteDisputed(msg.sender, correlationId);
    }

    /// Returns the funds to the payer; the arbiter or the payee (giving up) may refund,
    /// also in a dispute.
    function refund(bytes16 correlationId) external {
        require(
            status == Status.Created || status == Status.Approved || status == Status.Disputed,
            "closed"
        );
        require(msg.sender == arbiter || msg.sender == payee, "only arbiter or payee");
        status = Status.Refunded;
        factory.noteRefunded(correlationId);
        _pay(payer);
    }

    /// The current arbiter hands the role over.
    function changeArbiter(address newArbiter, bytes16 correlationId) external {
        require(status == Status.Created || status == Status.Approved, "closed");
        require(msg.sender == arbiter, "only the arbiter");
        require(newArbiter != address(0), "zero arbiter");
        arbiter = newArbiter;
        factory.noteArbiterChanged(newArbiter, correlationId);
    }

    function _pay(address to) private {
        if (asset == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            require(ok, "ether transfer failed");
        } else {
            require(IERC20(asset).transfer(to, amount), "token transfer failed");
        }
    }
}
